"""``ctx.events``: emit custom events, and schedule or cancel durable ones.

Like ``ctx.kv``, a run's calls take effect only when the handler succeeds: emitted events are
handed on at commit, scheduled events are stored and cancellations applied at commit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

from moonshard.errors import HostCallError, LimitExceeded
from moonshard.events import Event
from moonshard.host.api import Capability, RunScope
from moonshard.limits import Limits
from moonshard.store.api import TimerStore
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["EventsCapability", "Scheduled"]

_KEY_BYTES = 512


@dataclasses.dataclass(frozen=True, slots=True)
class Scheduled:
    """A scheduled event that was stored: its id and when it is due."""

    id: int
    due_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Schedule:
    key: str | None
    name: str
    data: JsonValue
    due_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Cancel:
    key: str


class EventsCapability(Capability, RunScope):
    """The ``ctx.events`` capability of one handler run of one tenant."""

    __slots__ = ("_author", "_clock", "_deliver", "_emitted", "_limits", "_on_scheduled",
                 "_ops", "_tenant", "_timers")

    def __init__(
        self, tenant: TenantId, limits: Limits, timers: TimerStore,
        deliver: Callable[[list[Event]], None], *, author: str | None = None,
        on_scheduled: Callable[[Scheduled], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tenant = tenant
        self._limits = limits
        self._timers = timers
        self._deliver = deliver
        self._author = author
        self._on_scheduled = on_scheduled
        self._clock = clock
        self._emitted: list[Event] = []
        self._ops: list[_Schedule | _Cancel] = []

    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        padded = [*args, None, None, None, None][:4]
        if op == "emit":
            return self._emit(padded[0], padded[1])
        if op == "schedule":
            return await self._schedule(*padded)
        if op == "cancel":
            return await self._cancel(padded[0])
        raise HostCallError(f"no such call ctx.events.{op}")

    def _event(self, name: JsonValue, data: JsonValue) -> Event:
        if not isinstance(name, str) or not name:
            raise HostCallError("the event name must be a non-empty string")
        try:
            return Event(name, data if data is not None else {}, author=self._author)
        except ValueError as error:
            raise HostCallError(str(error)) from None

    def _emit(self, name: JsonValue, data: JsonValue) -> JsonValue:
        if len(self._emitted) >= self._limits.emits_per_dispatch:
            raise LimitExceeded("events.emits",
                                f"at most {self._limits.emits_per_dispatch} emits per dispatch")
        self._emitted.append(self._event(name, data))
        return True

    def _due_at(self, when: JsonValue) -> float:
        if not isinstance(when, dict) or len(when) != 1 or \
                not ({"delay", "at"} & when.keys()):
            raise HostCallError("the third argument must be {delay = seconds} or {at = unix time}")
        value = when.get("delay", when.get("at"))
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value):
            raise HostCallError("delay and at must be numbers")
        if "delay" in when:
            if value < 0:
                raise HostCallError("delay must not be negative")
            return self._clock() + value
        return float(value)

    @staticmethod
    def _key(key: JsonValue) -> str:
        if not isinstance(key, str) or not key or len(key.encode()) > _KEY_BYTES:
            raise HostCallError(f"a schedule key is a non-empty string of at most {_KEY_BYTES} "
                                "bytes")
        return key

    async def _schedule(self, name: JsonValue, data: JsonValue, when: JsonValue,
                        key: JsonValue) -> JsonValue:
        event = self._event(name, data)
        due_at = self._due_at(when)
        checked_key = None if key is None else self._key(key)
        new = sum(1 for op in self._ops if isinstance(op, _Schedule))
        pending = await self._timers.pending_count(self._tenant)
        if checked_key is None and pending + new >= self._limits.scheduled_per_tenant:
            raise LimitExceeded(
                "events.scheduled", f"tenant {self._tenant} has {pending + new} scheduled "
                f"events pending; the limit is {self._limits.scheduled_per_tenant}")
        self._ops.append(_Schedule(checked_key, event.name, event.data, due_at))
        return True

    async def _cancel(self, key: JsonValue) -> JsonValue:
        checked = self._key(key)
        buffered = any(isinstance(op, _Schedule) and op.key == checked for op in self._ops)
        self._ops = [op for op in self._ops if not (isinstance(op, _Schedule) and
                                                    op.key == checked)]
        self._ops.append(_Cancel(checked))
        return buffered or await self._timers.has_pending(self._tenant, checked)

    async def commit(self) -> None:
        for op in self._ops:
            if isinstance(op, _Cancel):
                await self._timers.cancel(self._tenant, op.key)
                continue
            event_id = await self._timers.schedule(
                self._tenant, op.key, op.name, op.data, op.due_at,
                max_pending=self._limits.scheduled_per_tenant)
            if self._on_scheduled is not None:
                self._on_scheduled(Scheduled(event_id, op.due_at))
        self._ops = []
        emitted, self._emitted = self._emitted, []
        if emitted:
            self._deliver(emitted)

    async def rollback(self) -> None:
        self._ops = []
        self._emitted = []
