"""Length-prefixed frames over a stream (the socket pair between a worker and its owner).

The frames themselves are typed and encoded by ``contracts.wire.WireCodec``; this module only
cuts the stream into them.
"""

from __future__ import annotations

import asyncio
import struct

from moonshard.contracts.wire import Frame, WireCodec

__all__ = ["MAX_FRAME", "FrameWriter", "read_frame", "write_frame"]

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


class FrameWriter:
    """Writes frames in batches: the frames sent during one turn of the loop go out in one
    write (one system call, one wake-up of the peer's loop), in the order they were sent."""

    __slots__ = ("_codec", "_loop", "_parts", "_scheduled", "writer")

    def __init__(self, writer: asyncio.StreamWriter, codec: WireCodec) -> None:
        self.writer = writer
        self._codec = codec
        self._loop = asyncio.get_running_loop()
        self._parts: list[bytes] = []
        self._scheduled = False

    def send(self, frame: Frame) -> None:
        """On the writer's loop."""
        body = self._codec.encode(frame)
        self._parts += (_HEADER.pack(len(body)), body)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Writes what was sent so far (the loop calls it at the end of each turn)."""
        self._scheduled = False
        if self._parts and not self.writer.is_closing():
            self.writer.write(b"".join(self._parts))
        self._parts = []

    async def drain(self) -> None:
        """Waits while the transport's buffer is full (what is not flushed yet goes out at
        the end of this turn of the loop)."""
        await self.writer.drain()
