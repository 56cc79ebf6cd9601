"""Delivering a due timer: one path for key expiries and scheduled events alike.

A timer is looked up again in the store when it fires (a key changed or an event cancelled
since it was read is not delivered), run as an event through the tenant's templates, and then
finished (its stored row removed) when every handler succeeded, retried after a backoff when
one failed, or dropped as a dead letter, with a line in the tenant's log, once its retries are
used up.

A backlog (timers that came due while the worker was down) is fired in batches: the due
expiries of one tenant are read in one query, run one after another in the tenant's mailbox
(one job), and the finished ones deleted in one transaction. Each timer keeps its own outcome
(a failing handler retries only its own timer), and once a handler of the batch has
committed kv writes, each later row is read again before its timer runs. Handlers that call
nothing from the host share one Lua step (``run_several``). The delete comes at the batch's
end, so a crash mid-batch fires the batch's already-run keys again (at least once, with the
same ``event.id``), never loses one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

from moonshard.contracts.timers import TimerRef
from moonshard.contracts.worker import TenantLog
from moonshard.events import Event, HandlerResult
from moonshard.store.api import KVRecord, Store, VersionedKey
from moonshard.tenants import TenantId
from moonshard.timers.service import TimerService

__all__ = ["EventTarget", "TimerDelivery", "stable_id"]

_log = logging.getLogger(__name__)
_NAMESPACE = uuid.NAMESPACE_URL.bytes
_VERSION_MASK, _VERSION_5 = 0xF000 << 64, 5 << 76
_VARIANT_MASK, _VARIANT_RFC_4122 = 0xC000 << 48, 0x8000 << 48
# What became of a fired timer: its row is to be removed, a retry was scheduled, or nothing
# is left to do (the row changed or is gone).
_Outcome = Literal["finish", "retried", "dropped"]


class EventTarget(Protocol):
    """Where a timer's event runs: the tenant's actor, in order with its other events."""

    @property
    def tenant(self) -> TenantId: ...

    async def subscriptions(self) -> frozenset[str]: ...

    async def run(self, event: Event) -> list[HandlerResult]: ...

    async def run_several(self, events: Sequence[Event]) -> list[list[HandlerResult]]:
        """Runs the first of ``events`` and maybe some after it, in order; gives the results
        of those it ran (those that needed nothing from the host share one Lua step)."""

    @property
    def kv_commits(self) -> int:
        """How many of the tenant's runs committed key-value writes so far (in this worker):
        a batch reads a row again once this moved since the batch read it."""


def _versioned(timer: TimerRef, due: _Due) -> VersionedKey:
    return VersionedKey(timer.scope, timer.key, timer.version, due.expires_at)


@dataclasses.dataclass(frozen=True, slots=True)
class _Due:
    """A timer found still due in the store: its event, and how to finish or retry it."""

    event: Event
    attempt: int
    what: str
    # The expiry the row carried when read (None for a scheduled event).
    expires_at: float | None
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

    async def fire_batch(self, target: EventTarget, timers: Sequence[TimerRef]) -> None:
        """Fires timers of one tenant and one kind in order, each with its own outcome; never
        raises for one timer's failure (that timer is retried after a second)."""
        if len(timers) > 1 and timers[0].kind == "expiry":
            await self._fire_expiries(target, timers)
            return
        for timer in timers:
            try:
                await self.fire(target, timer)
            except Exception:
                self._failed(timer)

    def _failed(self, timer: TimerRef) -> None:
        """Firing broke outside a handler (the store, a VM build): try again in a second."""
        _log.exception("firing %s failed", timer)
        self._service.retry(dataclasses.replace(timer, due=time.time() + 1.0))

    async def _fire_expiries(self, target: EventTarget, timers: Sequence[TimerRef]) -> None:
        store, tenant = self._store, target.tenant
        try:
            rows, _ = await store.kv.load_rows(tenant, [(t.scope, t.key) for t in timers])
            subscriptions = await target.subscriptions()
        except Exception:
            for timer in timers:
                self._failed(timer)
            return
        read_at = target.kv_commits
        # Each timer's event as its row was read (built once: a run may take only a part).
        dues = [self._expiry_due(timer, rows.get((timer.scope, timer.key))) for timer in timers]
        finishing: list[tuple[TimerRef, VersionedKey]] = []
        position = 0
        while position < len(timers):
            timer = timers[position]
            try:
                fresh = target.kv_commits == read_at
                if fresh:
                    due = dues[position]
                else:
                    # A handler of this batch wrote keys since: this row may be one of them.
                    record, _ = await store.kv.load_row(tenant, timer.scope, timer.key)
                    due = self._expiry_due(timer, record)
                if due is None or due.event.name not in subscriptions:
                    position += 1
                    if due is None:
                        self._service.done(timer)
                    else:
                        finishing.append((timer, _versioned(timer, due)))
                    continue
                group = [(timer, due)]
                if fresh:  # the following timers' rows, read with this one, may run with it
                    for following, following_due in zip(timers[position + 1:],
                                                         dues[position + 1:], strict=True):
                        if following_due is None or \
                                following_due.event.name not in subscriptions:
                            break
                        group.append((following, following_due))
                    ran = await target.run_several([due.event for _, due in group])
                else:
                    ran = [await target.run(due.event)]
            except Exception:
                self._failed(timer)
                position += 1
                continue
            position += len(ran)
            for (fired, fired_due), results in zip(group, ran, strict=False):
                try:
                    outcome = await self._settle(target, fired, fired_due, results)
                except Exception:
                    self._failed(fired)
                    continue
                if outcome == "finish":
                    finishing.append((fired, _versioned(fired, fired_due)))
                elif outcome == "dropped":
                    self._service.done(fired)
        try:
            # Conditional on each version and expiry: a key changed meanwhile is left alone.
            await store.timers.delete_if_versions(tenant, [key for _, key in finishing])
        except Exception:
            for timer, _ in finishing:
                self._failed(timer)
            return
        for timer, _ in finishing:
            self._service.done(timer)

    async def _deliver(self, target: EventTarget, timer: TimerRef) -> bool:
        """True when a retry was scheduled."""
        due = await (self._expiry(timer) if timer.kind == "expiry" else self._scheduled(timer))
        if due is None:
            return False  # deleted, changed, cancelled or moved since it was read
        if due.event.name not in await target.subscriptions():
            await due.finish()
            return False
        outcome = await self._settle(target, timer, due, await target.run(due.event))
        if outcome == "finish":
            await due.finish()
        return outcome == "retried"

    async def _settle(self, target: EventTarget, timer: TimerRef, due: _Due,
                      results: list[HandlerResult]) -> _Outcome:
        """After the run: finish it, schedule its retry, or drop it as a dead letter."""
        if all(result.ok for result in results):
            return "finish"
        delay = self._service.backoff(due.attempt)
        if delay is None:
            errors = "; ".join(f"{result.template}: {result.error}" for result in results
                               if not result.ok)
            self._log(target.tenant, "error", "-", f"dead letter: {due.what} failed "
                      f"{due.attempt} times and was dropped ({errors})")
            return "finish"
        at = time.time() + delay
        if not await due.reschedule(at):
            return "dropped"
        self._service.retry(dataclasses.replace(timer, due=at, attempt=due.attempt + 1))
        return "retried"

    async def _expiry(self, timer: TimerRef) -> _Due | None:
        record, _ = await self._store.kv.load_row(timer.tenant, timer.scope, timer.key)
        return self._expiry_due(timer, record)

    def _expiry_due(self, timer: TimerRef, record: KVRecord | None) -> _Due | None:
        """The expiry's event, if the row read is still the one the timer was set for."""
        store, tenant = self._store, timer.tenant
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
        return _Due(event, timer.attempt, f"KeyExpiry of {timer.scope}/{timer.key}",
                    expires_at, finish, reschedule)

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
        return _Due(event, scheduled.attempt + 1, f"scheduled event {scheduled.name}", None,
                    finish, reschedule)


def stable_id(kind: str, tenant: TenantId, scope: str, key: str, version: int) -> str:
    """The same id for every delivery of one timer, so a handler can de-duplicate.

    ``uuid.uuid5(NAMESPACE_URL, name).hex`` computed without the ``UUID`` object (a third of
    the cost; it is paid once per timer fired): the SHA-1 of namespace and name, cut to 128
    bits, with the version (5) and variant (RFC 4122) bits set.
    """
    name = f"moonshard:{kind}:{tenant}:{scope}:{key}:{version}".encode()
    value = int.from_bytes(hashlib.sha1(_NAMESPACE + name, usedforsecurity=False).digest()[:16])
    value = (value & ~_VERSION_MASK) | _VERSION_5
    value = (value & ~_VARIANT_MASK) | _VARIANT_RFC_4122
    return f"{value:032x}"
