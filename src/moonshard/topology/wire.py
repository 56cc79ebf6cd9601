"""Replies and errors in wire form, shared by the topologies."""

from __future__ import annotations

from typing import Any

from moonshard.errors import (
    LimitExceeded,
    MoonshardError,
    Overloaded,
    TemplateError,
    WorkerUnavailable,
)
from moonshard.worker.core import DispatchReply
from moonshard.worker.messages import results_from_wire, results_to_wire

__all__ = ["error_from_wire", "error_to_wire", "reply_from_wire", "reply_to_wire"]


def reply_to_wire(reply: Any) -> Any:
    if isinstance(reply, DispatchReply):
        return {"results": results_to_wire(reply.results), "dropped": reply.dropped}
    return reply


def reply_from_wire(wire: Any) -> Any:
    if isinstance(wire, dict) and "results" in wire:
        return DispatchReply(results_from_wire(wire["results"]), wire.get("dropped"))
    return wire


def error_to_wire(error: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, Overloaded):
        out["retry_after"] = error.retry_after
    if isinstance(error, LimitExceeded):
        out["limit"] = error.limit
        out["retry_after"] = error.retry_after
    if isinstance(error, TemplateError):
        out.update(template=error.template, file=error.file, line=error.line,
                   message=error.message)
    return out


def error_from_wire(wire: dict[str, Any]) -> MoonshardError:
    kind, message = wire["type"], wire["message"]
    if kind == "Overloaded":
        return Overloaded(message, retry_after=wire.get("retry_after") or 1.0)
    if kind == "LimitExceeded":
        return LimitExceeded(wire.get("limit") or "unknown", message,
                             retry_after=wire.get("retry_after"))
    if kind == "TemplateError":
        return TemplateError(message, template=wire.get("template"), file=wire.get("file"),
                             line=wire.get("line"))
    if kind == "WorkerUnavailable":
        return WorkerUnavailable(message)
    return MoonshardError(f"{kind}: {message}")


