"""Length-prefixed frames over a stream (the socket pair between a worker and its owner).

The frames themselves are typed and encoded by ``contracts.wire.WireCodec``; this module only
cuts the stream into them.
"""

from __future__ import annotations

import asyncio
import struct

from moonshard.contracts.wire import Frame, WireCodec

__all__ = ["MAX_FRAME", "read_frame", "write_frame"]

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


async def read_frame(reader: asyncio.StreamReader, codec: WireCodec) -> Frame | None:
    """The next frame, or None at the end of the stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes is larger than {MAX_FRAME}")
        return codec.decode(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        # A killed peer shows as a short read, a reset or a broken pipe: all mean it is gone.
        return None


def write_frame(writer: asyncio.StreamWriter, codec: WireCodec, frame: Frame) -> None:
    body = codec.encode(frame)
    writer.write(_HEADER.pack(len(body)) + body)
