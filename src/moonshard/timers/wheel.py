"""The next window of one worker's timers: a heap in memory; everything later stays in the store.

The wheel reads the store in pages ordered by (due, identity), remembering a cursor, so a
million pending timers never mean a million objects: it holds at most a window of
``window_seconds`` or ``page_size`` timers, whichever is less, plus the retries it schedules.
A timer armed inside what the wheel has already read goes straight into the heap; one armed
beyond it is read when the wheel gets there.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable

from moonshard.contracts.timers import CURSOR_START, Cursor, TimerRef
from moonshard.tenants import TenantId

__all__ = ["Cursor", "TimerRef", "TimerSource", "TimerWheel"]

TimerSource = Callable[[Cursor, float, int], Awaitable[list[TimerRef]]]
"""Reads up to ``limit`` timers after the cursor and due before ``end``, in cursor order."""


class TimerWheel:
    """Timers of one kind for one worker: load in pages, pop when due."""

    __slots__ = ("_cursor", "_heap", "_held", "_horizon", "_load", "_seq", "page_size",
                 "window_seconds")

    def __init__(self, load: TimerSource, *, window_seconds: float = 30.0,
                 page_size: int = 5000) -> None:
        self._load = load
        self.window_seconds = window_seconds
        self.page_size = page_size
        self._heap: list[tuple[float, int, TimerRef]] = []
        self._held: set[tuple[str, TenantId, str, str, int]] = set()
        self._seq = 0
        self._cursor: Cursor = CURSOR_START
        # Every stored timer due before the horizon has been read.
        self._horizon = float("-inf")

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def horizon(self) -> float:
        return self._horizon

    def needs_refill(self, now: float) -> bool:
        return self._horizon < now + self.window_seconds / 2 and len(self._heap) < \
            self.page_size // 2

    async def refill(self, now: float) -> int:
        """Reads the next page of the window; returns how many timers it added."""
        end = now + self.window_seconds
        page = await self._load(self._cursor, end, self.page_size)
        added = sum(1 for ref in page if self._push(ref))
        if page:
            self._cursor = page[-1].cursor
        if len(page) >= self.page_size:
            self._horizon = self._cursor[0]
        else:
            self._horizon = end
        return added

    def arm(self, ref: TimerRef) -> bool:
        """A timer just written: held now if the wheel has read past it, else read later."""
        if ref.due < self._horizon or ref.cursor <= self._cursor:
            return self._push(ref)
        return False

    def retry(self, ref: TimerRef) -> None:
        """A retry lives only in memory: after a restart the stored timer fires afresh."""
        self._push(ref, force=True)

    def _push(self, ref: TimerRef, *, force: bool = False) -> bool:
        if ref.identity in self._held and not force:
            return False
        self._held.add(ref.identity)
        self._seq += 1
        heapq.heappush(self._heap, (ref.due, self._seq, ref))
        return True

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int) -> list[TimerRef]:
        """Up to ``limit`` timers due at ``now``; they stay held until ``done``."""
        due: list[TimerRef] = []
        while self._heap and self._heap[0][0] <= now and len(due) < limit:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def done(self, ref: TimerRef) -> None:
        """The timer was fired (or found changed): the store's copy decides from now on."""
        self._held.discard(ref.identity)
