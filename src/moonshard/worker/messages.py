"""The typed messages between a worker's owner and the worker, and their wire form.

The wire form is plain data (dicts, lists, strings, numbers) so that msgpack carries it
between processes and the thread topology can pass it as is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from moonshard.events import Event, HandlerResult
from moonshard.store.api import TimerRef
from moonshard.tenants import TenantId

__all__ = [
    "Arm",
    "Dispatch",
    "Reload",
    "Request",
    "Status",
    "Stop",
    "Validate",
    "event_from_wire",
    "event_to_wire",
    "request_from_wire",
    "request_to_wire",
    "results_from_wire",
    "results_to_wire",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Dispatch:
    """Run ``event`` through ``tenant``'s templates; the reply is the list of results."""

    tenant: TenantId
    event: Event


@dataclasses.dataclass(frozen=True, slots=True)
class Reload:
    """The tenant's template set changed: swap in the stored one before any later event."""

    tenant: TenantId


@dataclasses.dataclass(frozen=True, slots=True)
class Validate:
    """Compile and load a template in a scratch VM; the reply is its subscriptions.

    Validation runs template code, so it runs where Lua runs: in a worker, under its limits.
    """

    tenant: TenantId
    name: str
    files: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Arm:
    """A timer was written outside the worker (the HTTP API): hold it if it is due soon."""

    timer: TimerRef


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """Report the worker's state (resident VMs, queues), or one tenant's with ``tenant``."""

    tenant: TenantId | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Stop:
    """Finish what is queued and running within ``deadline`` seconds, then stop."""

    deadline: float = 30.0


Request = Dispatch | Reload | Validate | Arm | Status | Stop


def event_to_wire(event: Event) -> dict[str, Any]:
    return {"name": event.name, "data": event.data, "author": event.author, "id": event.id,
            "at": event.at}


def event_from_wire(wire: dict[str, Any]) -> Event:
    return Event(wire["name"], wire["data"], author=wire["author"], id=wire["id"],
                 at=wire["at"])


def request_to_wire(request: Request) -> dict[str, Any]:
    if isinstance(request, Dispatch):
        return {"t": "dispatch", "tenant": str(request.tenant),
                "event": event_to_wire(request.event)}
    if isinstance(request, Reload):
        return {"t": "reload", "tenant": str(request.tenant)}
    if isinstance(request, Validate):
        return {"t": "validate", "tenant": str(request.tenant), "name": request.name,
                "files": request.files}
    if isinstance(request, Arm):
        timer = request.timer
        return {"t": "arm", "kind": timer.kind, "due": timer.due, "tenant": str(timer.tenant),
                "scope": timer.scope, "key": timer.key, "version": timer.version}
    if isinstance(request, Stop):
        return {"t": "stop", "deadline": request.deadline}
    return {"t": "status", "tenant": None if request.tenant is None else str(request.tenant)}


def request_from_wire(wire: dict[str, Any]) -> Request:
    kind = wire["t"]
    if kind == "dispatch":
        return Dispatch(TenantId.parse(wire["tenant"]), event_from_wire(wire["event"]))
    if kind == "reload":
        return Reload(TenantId.parse(wire["tenant"]))
    if kind == "validate":
        return Validate(TenantId.parse(wire["tenant"]), wire["name"], dict(wire["files"]))
    if kind == "arm":
        return Arm(TimerRef(wire["kind"], float(wire["due"]), TenantId.parse(wire["tenant"]),
                            wire["scope"], wire["key"], int(wire["version"])))
    if kind == "stop":
        return Stop(float(wire["deadline"]))
    if kind == "status":
        tenant = wire.get("tenant")
        return Status(None if tenant is None else TenantId.parse(tenant))
    raise ValueError(f"unknown request {kind!r}")


def results_to_wire(results: list[HandlerResult]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(result) for result in results]


def results_from_wire(wire: list[dict[str, Any]]) -> list[HandlerResult]:
    return [HandlerResult(**item) for item in wire]
