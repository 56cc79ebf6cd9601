"""The timer service of one worker: fires the due timers of the tenants that worker owns.

Firing goes through the tenant's mailbox like any event, so it is ordered with the tenant's
other events. Due timers are fired in batches of up to ``batch_size`` timers of one tenant
(one mailbox job each, in due order within the tenant), and at most ``max_in_flight`` batches
are being fired at once, so a backlog (timers that came due while the system was down) drains
promptly but never floods the worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from moonshard.contracts.worker import TimerConfig
from moonshard.errors import WorkerUnavailable
from moonshard.tenants import TenantId
from moonshard.timers.wheel import TimerRef, TimerSource, TimerWheel

__all__ = ["TimerConfig", "TimerService", "TimerStats", "batches_by_tenant"]

_log = logging.getLogger(__name__)


class TimerStats:
    """Lateness of first firings (seconds after due), over the last ``keep`` of them."""

    __slots__ = ("_late", "batches", "fired")

    def __init__(self, keep: int = 10_000) -> None:
        self._late: collections.deque[float] = collections.deque(maxlen=keep)
        self.fired = 0
        # Mailbox jobs the timers were fired in (fewer than timers when a backlog drains).
        self.batches = 0

    def record(self, lateness: float) -> None:
        self._late.append(max(0.0, lateness))
        self.fired += 1

    def percentile(self, fraction: float) -> float | None:
        if not self._late:
            return None
        ordered = sorted(self._late)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def to_json(self) -> dict[str, float | int | None]:
        return {"fired": self.fired, "batches": self.batches,
                "lateness_p50": self.percentile(0.5),
                "lateness_p99": self.percentile(0.99)}


class TimerService:
    """Two wheels (expiries, scheduled events) and the loop that fires what comes due."""

    def __init__(self, sources: dict[str, TimerSource],
                 fire: Callable[[Sequence[TimerRef]], Awaitable[None]],
                 config: TimerConfig) -> None:
        self.config = config
        self.stats = TimerStats()
        self._fire = fire
        self._wheels = {
            kind: TimerWheel(source, window_seconds=config.window_seconds,
                             page_size=config.page_size)
            for kind, source in sources.items()
        }
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_in_flight)

    @property
    def held(self) -> int:
        return sum(len(wheel) for wheel in self._wheels.values())

    def arm(self, ref: TimerRef) -> None:
        """A timer was just written by this worker (or told to it)."""
        if self._wheels[ref.kind].arm(ref):
            self._wake.set()

    def retry(self, ref: TimerRef) -> None:
        self._wheels[ref.kind].retry(ref)
        self._wake.set()

    def done(self, ref: TimerRef) -> None:
        self._wheels[ref.kind].done(ref)

    def backoff(self, attempt: int) -> float | None:
        """The delay before attempt ``attempt + 1``, or None when the retries are used up."""
        if attempt > len(self.config.backoff):
            return None
        return self.config.backoff[attempt - 1]

    async def run(self) -> None:
        """Fires timers until cancelled; every firing task belongs to this loop's group."""
        async with asyncio.TaskGroup() as firing:
            while True:
                now = time.time()
                for wheel in self._wheels.values():
                    while wheel.needs_refill(now):
                        if not await wheel.refill(now):
                            break
                await self._fire_due(firing)
                await self._sleep_until_next()

    async def _fire_due(self, firing: asyncio.TaskGroup) -> None:
        size = max(1, self.config.batch_size)
        for wheel in self._wheels.values():
            while True:
                due = wheel.pop_due(time.time(), size * self.config.max_in_flight)
                if not due:
                    break
                for batch in batches_by_tenant(due, size):
                    await self._slots.acquire()
                    firing.create_task(self._fire_batch(batch))

    async def _fire_batch(self, refs: Sequence[TimerRef]) -> None:
        try:
            now = time.time()
            self.stats.batches += 1
            for ref in refs:
                if ref.attempt == 1:
                    self.stats.record(now - ref.due)
            await self._fire(refs)
        except WorkerUnavailable:
            pass  # the worker is stopping: the stored timers fire after the restart
        except Exception:
            # Refused before any of them ran (the mailbox was full): all of them again later.
            _log.exception("firing %d timers of %s failed", len(refs), refs[0].tenant)
            for ref in refs:
                self.retry(dataclasses.replace(ref, due=time.time() + 1.0))
        finally:
            self._slots.release()

    async def _sleep_until_next(self) -> None:
        now = time.time()
        dues = [due for wheel in self._wheels.values() if (due := wheel.next_due()) is not None]
        # A wheel wants reading when its horizon nears, but only once it has room: a full
        # wheel waits for its timers to fire (else this loop would spin).
        refills = [wheel.horizon - wheel.window_seconds / 2 for wheel in self._wheels.values()
                   if len(wheel) < wheel.page_size // 2]
        wake_at = min([*dues, *refills, now + self.config.idle_poll_seconds])
        self._wake.clear()
        if wake_at <= now:
            await asyncio.sleep(0)  # never starve the worker's loop, even when behind
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wake_at - now)


def batches_by_tenant(due: Sequence[TimerRef], size: int) -> list[list[TimerRef]]:
    """``due`` cut into batches of one tenant each, of at most ``size`` timers, each in the
    order given; a tenant's batches come in that order too."""
    batches: list[list[TimerRef]] = []
    open_batch: dict[TenantId, list[TimerRef]] = {}
    for ref in due:
        batch = open_batch.get(ref.tenant)
        if batch is None or len(batch) >= size:
            batch = open_batch[ref.tenant] = []
            batches.append(batch)
        batch.append(ref)
    return batches
