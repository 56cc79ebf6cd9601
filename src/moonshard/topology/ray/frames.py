"""The frames between a Ray slot's owner and its actor: ``contracts.wire`` frames, in batches.

The owner sends batches of ``Call`` frames; the actor hands back batches of ``Started``,
``Answer``, ``Failed``, ``Log`` and ``Stuck`` frames. Each batch is one msgpack array of the
wire's tagged frames, so a reply is exactly its type and an error keeps its class and fields.
"""

from __future__ import annotations

import msgspec

from moonshard.contracts.wire import Frame

__all__ = ["FrameBatches"]


class FrameBatches:
    """Encodes and decodes batches of frames. One per end (it holds reusable buffers)."""

    __slots__ = ("_decoder", "_encoder")

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(list[Frame])

    def encode(self, frames: list[Frame]) -> bytes:
        return self._encoder.encode(frames)

    def decode(self, data: bytes) -> list[Frame]:
        """Raises ``msgspec.DecodeError`` (a ``ValidationError`` for a malformed frame)."""
        return self._decoder.decode(data)
