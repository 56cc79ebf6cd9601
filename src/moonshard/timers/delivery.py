"""Delivering a due timer: one path for key expiries and scheduled events alike.

A timer is looked up again in the store when it fires (a key changed or an event cancelled
since it was read is not delivered), run as an event through the tenant's templates, and then
finished (its stored row removed) when every handler succeeded, retried after a backoff when
one failed, or dropped as a dead letter, with a line in the tenant's log, once its retries are
used up.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from moonshard.contracts.timers import TimerRef
from moonshard.contracts.worker import TenantLog
from moonshard.events import Event, HandlerResult
from moonshard.store.api import Store
from moonshard.tenants import TenantId
from moonshard.timers.service import TimerService

__all__ = ["EventTarget", "TimerDelivery", "stable_id"]


class EventTarget(Protocol):
    """Where a timer's event runs: the tenant's actor, in order with its other events."""

    @property
    def tenant(self) -> TenantId: ...

    async def subscriptions(self) -> frozenset[str]: ...

    async def run(self, event: Event) -> list[HandlerResult]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Due:
    """A timer found still due in the store: its event, and how to finish or retry it."""

    event: Event
    attempt: int
    what: str
    finish: Callable[[], Awaitable[object]]
    # Stores the next attempt's time; False when the row is gone meanwhile.
    reschedule: Callable[[float], Awaitable[bool]]


class TimerDelivery:
    """Fires the timers of one worker through its tenants' actors."""

    __slots__ = ("_log", "_service", "_store")

    def __init__(self, store: Store, service: TimerService, log: TenantLog) -> None:
        self._store = store
        self._service = service
        self._log = log

    async def fire(self, target: EventTarget, timer: TimerRef) -> None:
        retried = False
        try:
            retried = await self._deliver(target, timer)
        finally:
            if not retried:
                self._service.done(timer)

    async def _deliver(self, target: EventTarget, timer: TimerRef) -> bool:
        """True when a retry was scheduled."""
        due = await (self._expiry(timer) if timer.kind == "expiry" else self._scheduled(timer))
        if due is None:
            return False  # deleted, changed, cancelled or moved since it was read
        if due.event.name not in await target.subscriptions():
            await due.finish()
            return False
        results = await target.run(due.event)
        if all(result.ok for result in results):
            await due.finish()
            return False
        delay = self._service.backoff(due.attempt)
        if delay is None:
            await due.finish()
            errors = "; ".join(f"{result.template}: {result.error}" for result in results
                               if not result.ok)
            self._log(target.tenant, "error", "-", f"dead letter: {due.what} failed "
                      f"{due.attempt} times and was dropped ({errors})")
            return False
        at = time.time() + delay
        if not await due.reschedule(at):
            return False
        self._service.retry(dataclasses.replace(timer, due=at, attempt=due.attempt + 1))
        return True

    async def _expiry(self, timer: TimerRef) -> _Due | None:
        store, tenant = self._store, timer.tenant
        record, _ = await store.kv.load_row(tenant, timer.scope, timer.key)
        if record is None or record.version != timer.version or record.expires_at is None \
                or record.expires_at > time.time():
            return None
        expires_at = record.expires_at

        async def finish() -> bool:
            return await store.timers.delete_if_version(
                tenant, timer.scope, timer.key, timer.version, expires_at=expires_at)

        async def reschedule(at: float) -> bool:
            return True  # expiry retries are held in memory only

        event = Event("KeyExpiry", {
            "key": record.key, "scope": record.scope, "value": record.value,
            "expires_at": expires_at, "attempt": timer.attempt,
        }, id=stable_id("expiry", tenant, timer.scope, timer.key, timer.version))
        return _Due(event, timer.attempt, f"KeyExpiry of {timer.scope}/{timer.key}", finish,
                    reschedule)

    async def _scheduled(self, timer: TimerRef) -> _Due | None:
        timers = self._store.timers
        scheduled = await timers.get_scheduled(timer.version)
        if scheduled is None or scheduled.due_at > time.time():
            return None
        event_id = scheduled.id

        async def finish() -> bool:
            return await timers.remove_scheduled(event_id)

        async def reschedule(at: float) -> bool:
            return await timers.retry_scheduled(event_id, at)

        event = Event(scheduled.name, scheduled.data, id=stable_id(
            "scheduled", timer.tenant, "", str(event_id), event_id))
        return _Due(event, scheduled.attempt + 1, f"scheduled event {scheduled.name}", finish,
                    reschedule)


def stable_id(kind: str, tenant: TenantId, scope: str, key: str, version: int) -> str:
    """The same id for every delivery of one timer, so a handler can de-duplicate."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"moonshard:{kind}:{tenant}:{scope}:{key}:{version}").hex
