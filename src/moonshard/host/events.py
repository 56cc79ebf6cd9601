"""``ctx.events``: emit custom events, and schedule or cancel durable ones.

Like ``ctx.kv``, a run's calls take effect only when the handler succeeds: its schedules,
cancellations and emitted events are buffered and committed with its kv writes in one
transaction. Emitted events are stored in the outbox by that commit and handed on after it,
so a crash between the two delays them but never loses them.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence

from moonshard.contracts.host import Capability, RunScope
from moonshard.errors import HostCallError, LimitExceeded
from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.store.api import RunCancel, RunEffects, RunEmit, RunSchedule, TimerStore
from moonshard.tenants import TenantId
from moonshard.values import JsonValue, dumps_json

__all__ = ["EventsCapability"]

_KEY_BYTES = 512


class EventsCapability(Capability, RunScope):
    """The ``ctx.events`` capability of one handler run of one tenant."""

    __slots__ = ("_author", "_clock", "_closed", "_emitted", "_limits", "_ops", "_tenant",
                 "_timers")

    def __init__(
        self, tenant: TenantId, limits: Limits, timers: TimerStore, *,
        author: str | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self._tenant = tenant
        self._limits = limits
        self._timers = timers
        self._author = author
        self._clock = clock
        self._emitted: list[RunEmit] = []
        self._ops: list[RunSchedule | RunCancel] = []
        self._closed = False

    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        if self._closed:
            raise HostCallError("ctx.events cannot be used after the handler run has ended")
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
        # The same limit as a stored value: this data is stored too (outbox, schedule).
        size = len(dumps_json(data).encode()) if data is not None else 0
        if size > self._limits.value_bytes:
            raise LimitExceeded("events.data_size", f"event data is {size} bytes encoded; "
                                f"the limit is {self._limits.value_bytes}")
        try:
            return Event(name, data if data is not None else {}, author=self._author)
        except ValueError as error:
            raise HostCallError(str(error)) from None

    def _emit(self, name: JsonValue, data: JsonValue) -> JsonValue:
        if len(self._emitted) >= self._limits.emits_per_dispatch:
            raise LimitExceeded("events.emits",
                                f"at most {self._limits.emits_per_dispatch} emits per dispatch")
        event = self._event(name, data)
        # The id is chosen now and stored with the event: every delivery carries the same one.
        self._emitted.append(RunEmit(event.name, event.data, event.author, uuid.uuid4().hex))
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
        pending = await self._pending_after(checked_key)
        if pending > self._limits.scheduled_per_tenant:
            raise LimitExceeded(
                "events.scheduled", f"tenant {self._tenant} would have {pending} scheduled "
                f"events pending; the limit is {self._limits.scheduled_per_tenant}")
        self._ops.append(RunSchedule(checked_key, event.name, event.data, due_at))
        return True

    async def _pending_after(self, key: str | None) -> int:
        """How many events the tenant would have pending with this run's ops and one more
        schedule of ``key``. The store checks again, exactly, at commit."""
        pending = await self._timers.pending_count(self._tenant)
        keys: dict[str, bool] = {}  # key -> pending after the ops so far
        for op in [*self._ops, RunSchedule(key, "", None, 0.0)]:
            if op.key is not None and op.key not in keys:
                keys[op.key] = await self._timers.has_pending(self._tenant, op.key)
            if isinstance(op, RunCancel):
                pending -= keys[op.key]
                keys[op.key] = False
                continue
            if op.key is not None:
                pending -= keys[op.key]
                keys[op.key] = True
            pending += 1
        return pending

    async def _cancel(self, key: JsonValue) -> JsonValue:
        checked = self._key(key)
        buffered = any(isinstance(op, RunSchedule) and op.key == checked for op in self._ops)
        self._ops = [op for op in self._ops if not (isinstance(op, RunSchedule) and
                                                    op.key == checked)]
        self._ops.append(RunCancel(checked))
        return buffered or await self._timers.has_pending(self._tenant, checked)

    def take_effects(self) -> RunEffects:
        ops, emitted = tuple(self._ops), tuple(self._emitted)
        self.discard()
        return RunEffects(events=ops, emits=emitted)

    def discard(self) -> None:
        self._closed = True
        self._ops = []
        self._emitted = []
