"""The one codec of the process wire: typed frames, msgpack-encoded by msgspec.

Between a worker's owner and a worker process travel only the frames below. Each is a tagged
struct, so a frame decodes to exactly its type or fails with ``msgspec.ValidationError``; a
reply is the typed value the request names, and an error crosses as ``WireError`` and comes
back as the same ``MoonshardError`` class with the same message and fields.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

from moonshard.contracts.worker import Reply, Request, WorkerConfig
from moonshard.errors import (
    HostCallError,
    LimitExceeded,
    MoonshardError,
    NotBuiltError,
    Overloaded,
    SchemaError,
    TemplateError,
    TenantQuarantined,
    ValueConversionError,
    WorkerCrashed,
    WorkerUnavailable,
)
from moonshard.tenants import TenantId

__all__ = [
    "Answer",
    "Call",
    "Configure",
    "Failed",
    "Frame",
    "Log",
    "Ready",
    "Started",
    "Stuck",
    "WireCodec",
    "WireError",
    "error_from_wire",
    "error_to_wire",
]


class WireError(msgspec.Struct, frozen=True, tag=True):
    """A ``MoonshardError`` in flight: its class name, message and fields."""

    kind: str
    message: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


# -- owner -> worker --------------------------------------------------------------------------
class Configure(msgspec.Struct, frozen=True, tag=True):
    """The first frame to a worker process: its whole configuration."""

    config: WorkerConfig


class Call(msgspec.Struct, frozen=True, tag=True):
    id: int
    request: Request


# -- worker -> owner --------------------------------------------------------------------------
class Ready(msgspec.Struct, frozen=True, tag=True):
    pid: int


class Started(msgspec.Struct, frozen=True, tag=True):
    """The call ``id`` began to run: if the worker dies now, it is not sent elsewhere."""

    id: int


class Answer(msgspec.Struct, frozen=True, tag=True):
    id: int
    reply: Reply


class Failed(msgspec.Struct, frozen=True, tag=True):
    id: int
    error: WireError


class Log(msgspec.Struct, frozen=True, tag=True):
    tenant: TenantId
    level: str
    template: str
    message: str


class Stuck(msgspec.Struct, frozen=True, tag=True):
    """The worker ends itself: a Lua call of ``tenant`` is stuck past the hard limit."""

    tenant: TenantId | None
    label: str
    seconds: float


Frame: TypeAlias = Configure | Call | Ready | Started | Answer | Failed | Log | Stuck


class WireCodec:
    """Encodes and decodes frames. One per connection end (it holds reusable buffers)."""

    __slots__ = ("_decoder", "_encoder")

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Frame)

    def encode(self, frame: Frame) -> bytes:
        return self._encoder.encode(frame)

    def decode(self, data: bytes) -> Frame:
        """Raises ``msgspec.DecodeError`` (a ``ValidationError`` for a malformed frame)."""
        return self._decoder.decode(data)


def error_to_wire(error: BaseException) -> WireError:
    """A worker's failure as data. Errors that are not moonshard's own keep only their text."""
    fields: dict[str, Any] = {}
    if isinstance(error, TemplateError):
        fields = {"template": error.template, "file": error.file, "line": error.line,
                  "code": error.code}
        return WireError("TemplateError", error.message, fields)
    if isinstance(error, LimitExceeded):
        return WireError("LimitExceeded", str(error),
                         {"limit": error.limit, "retry_after": error.retry_after})
    if isinstance(error, Overloaded):
        return WireError("Overloaded", str(error), {"retry_after": error.retry_after})
    if isinstance(error, TenantQuarantined):
        return WireError("TenantQuarantined", str(error), {"until": error.until})
    if isinstance(error, WorkerCrashed):
        return WireError("WorkerCrashed", str(error), {"stuck": error.stuck})
    for kind in _PLAIN:
        if type(error) is kind:
            return WireError(kind.__name__, str(error))
    if isinstance(error, MoonshardError):
        return WireError("MoonshardError", str(error))
    return WireError("InternalError",
                     f"internal error in the worker: {type(error).__name__}: {error}")


def error_from_wire(wire: WireError) -> MoonshardError:
    """The error ``error_to_wire`` was given, as the same class with the same fields."""
    fields, message = wire.fields, wire.message
    match wire.kind:
        case "TemplateError":
            return TemplateError(message, template=fields.get("template"),
                                 file=fields.get("file"), line=fields.get("line"),
                                 code=str(fields.get("code") or "compile_error"))
        case "LimitExceeded":
            return LimitExceeded(str(fields.get("limit") or "unknown"), message,
                                 retry_after=fields.get("retry_after"))
        case "Overloaded":
            return Overloaded(message, retry_after=float(fields.get("retry_after") or 1.0))
        case "TenantQuarantined":
            return TenantQuarantined(message, until=float(fields.get("until") or 0.0))
        case "WorkerCrashed":
            return WorkerCrashed(message, stuck=fields.get("stuck"))
    for kind in _PLAIN:
        if kind.__name__ == wire.kind:
            return kind(message)
    return MoonshardError(message)


# Errors with a message and nothing else.
_PLAIN: tuple[type[MoonshardError], ...] = (
    HostCallError, NotBuiltError, SchemaError, ValueConversionError, WorkerUnavailable)
