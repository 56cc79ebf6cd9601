"""Length-prefixed msgpack frames over a stream (a socket pair between parent and child)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

__all__ = ["MAX_FRAME", "read_frame", "write_frame"]

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


async def read_frame(reader: asyncio.StreamReader) -> Any | None:
    """The next message, or None at the end of the stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes is larger than {MAX_FRAME}")
        return msgpack.unpackb(await reader.readexactly(size), raw=False)
    except (asyncio.IncompleteReadError, ConnectionError):
        # A killed peer shows as a short read, a reset or a broken pipe: all mean it is gone.
        return None


def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    writer.write(_HEADER.pack(len(body)) + body)
