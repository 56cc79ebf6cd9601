"""``ctx.events`` for runs outside the service: emit works, durable scheduling is not built here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moonshard.errors import HostCallError, LimitExceeded, NotBuiltError
from moonshard.events import Event
from moonshard.host.api import Capability, RunScope
from moonshard.values import JsonValue

__all__ = ["EmitOnly"]


class EmitOnly(Capability, RunScope):
    """Collects ``emit`` calls of one handler run and hands them on when the run commits."""

    __slots__ = ("_author", "_deliver", "_limit", "_pending")

    def __init__(self, deliver: Callable[[list[Event]], None], limit: int,
                 author: str | None = None) -> None:
        self._deliver = deliver
        self._limit = limit
        self._author = author
        self._pending: list[Event] = []

    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        if op == "emit":
            return self._emit(*args[:2])
        if op in ("schedule", "cancel"):
            raise NotBuiltError(
                "durable scheduled events are not built yet in this version of moonshard")
        raise HostCallError(f"no such call ctx.events.{op}")

    def _emit(self, name: JsonValue = None, data: JsonValue = None) -> JsonValue:
        if not isinstance(name, str) or not name:
            raise HostCallError("the event name must be a non-empty string")
        if len(self._pending) >= self._limit:
            raise LimitExceeded("events.emits", f"at most {self._limit} emits per dispatch")
        try:
            self._pending.append(Event(name, data if data is not None else {},
                                       author=self._author))
        except ValueError as error:
            raise HostCallError(str(error)) from None
        return True

    async def commit(self) -> None:
        self._deliver(self._pending)
        self._pending = []

    async def rollback(self) -> None:
        self._pending = []
