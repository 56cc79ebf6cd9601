"""Tenants' log lines as the service keeps them: written to the store in batches, read back
with filters, and handed to live followers.

A ``LogBook`` is the ``log=`` sink of ``Engine.open``: every worker's lines arrive here,
whatever the topology (thread workers call it from their threads, process workers' lines
come over their sockets), so following works across all workers. Lines are handed to the
server's event loop with ``call_soon_threadsafe`` and touched on that loop only. ``run``
(one task, owned by the server) writes them to the store's tenant log every
``flush_seconds``; followers get each line once it is stored, with its id, so a backlog read
from the store and the live lines after it never miss or repeat one. Retention is the
store's: ``keep_lines`` per tenant, and lines older than ``keep_days`` are forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from moonshard.store.tenantlog import LogQuery, NewLogLine, StoredLogLine

if TYPE_CHECKING:
    from moonshard.store.tenantlog import TenantLogStore
    from moonshard.tenants import TenantId

__all__ = ["LogBook", "LogFollower", "LogLine"]

LogLine = StoredLogLine
"""One line of a tenant's log (``ts``, ``level``, ``template``, ``message``; ``id``)."""

_DAY = 86_400.0
# How often lines past the days of retention are removed.
_FORGET_EVERY = 600.0
_log = logging.getLogger(__name__)


class LogFollower:
    """A live subscription to one tenant's new lines; iterate it, it ends when closed."""

    __slots__ = ("_closed", "_dropped", "_queue", "query")

    def __init__(self, max_queued: int, query: LogQuery) -> None:
        if max_queued < 3:
            raise ValueError("a follower needs room for at least 3 lines")
        self.query = query
        self._queue: asyncio.Queue[LogLine | None] = asyncio.Queue(max_queued)
        self._dropped = 0
        self._closed = False

    def offer(self, line: LogLine) -> None:
        if self._closed or not self.query.matches(line):
            return
        # Two places stay free: one for the "lines skipped" note, one for the end marker.
        if self._queue.qsize() >= self._queue.maxsize - 2:
            # A reader slower than the tenant's output loses lines, never holds up the book.
            self._dropped += 1
            return
        if self._dropped:
            self._queue.put_nowait(LogLine(line.id, line.ts, "warn", "-",
                                           f"{self._dropped} lines skipped: reading too slowly"))
            self._dropped = 0
        self._queue.put_nowait(line)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[LogLine]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[LogLine]:
        while True:
            line = await self._queue.get()
            if line is None:
                return
            yield line


class LogBook:
    """Tenants' logs over a store, with followers. Create it on the loop that reads it."""

    def __init__(
        self, *, keep_lines: int = 1000, keep_days: float = 7.0, errors_per_tenant: int = 20,
        follower_queue: int = 1000, max_followers: int = 1000, max_pending: int = 100_000,
        flush_seconds: float = 0.1, clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_lines < 1 or keep_days <= 0:
            raise ValueError("a log keeps at least one line, for more than no time")
        self._loop = asyncio.get_running_loop()
        self.keep_lines = keep_lines
        self.keep_days = keep_days
        self._errors_per_tenant = errors_per_tenant
        self._follower_queue = follower_queue
        self.max_followers = max_followers
        self._max_pending = max_pending
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._store: TenantLogStore | None = None
        self._pending: list[NewLogLine] = []
        self._dropped = 0
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()
        # Held while writing a batch and while a follower reads its backlog: no line is
        # then both in a backlog and offered live.
        self._flushing = asyncio.Lock()
        self._followers: dict[TenantId, set[LogFollower]] = {}
        self._closed = False
        self.lines_written = 0

    # -- writing (any thread) --------------------------------------------------------------
    def __call__(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        """The engine's ``log=`` sink: safe to call from any thread."""
        line = NewLogLine(tenant, self._clock(), level, template, message)
        # RuntimeError: the loop has closed; the service is gone, and its log with it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._buffer, line)

    def _buffer(self, line: NewLogLine) -> None:
        if len(self._pending) >= self._max_pending:
            self._dropped += 1  # the store is behind: bounded memory first
            return
        self._pending.append(line)
        self._wake.set()

    # -- the writer task -------------------------------------------------------------------
    def attach(self, store: TenantLogStore) -> None:
        """Where lines are written and read; until then they wait in memory."""
        self._store = store

    async def run(self, store: TenantLogStore) -> None:
        """Writes lines to ``store`` until ``stop``; the service owns this task."""
        self.attach(store)
        forgotten_at = -_FORGET_EVERY
        try:
            while not self._ended.is_set():
                if self._loop.time() - forgotten_at >= _FORGET_EVERY:
                    forgotten_at = self._loop.time()
                    await self._forget_old(store)
                await self.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_for_lines(), _FORGET_EVERY)
                await asyncio.sleep(self._flush_seconds)  # lines arriving meanwhile: a batch
        finally:
            await self.flush()

    async def _wait_for_lines(self) -> None:
        ended = asyncio.ensure_future(self._ended.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({ended, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            woken.cancel()

    async def _forget_old(self, store: TenantLogStore) -> None:
        try:
            await store.forget_before(self._clock() - self.keep_days * _DAY)
        except Exception as error:  # the log must not take the service down
            _log.warning("could not remove old tenant log lines: %s", error)

    def stop(self) -> None:
        """Ends ``run`` after a last write of what is pending."""
        self._ended.set()

    async def flush(self) -> None:
        """Writes every pending line to the store and offers it to followers."""
        await asyncio.sleep(0)  # lines already handed to the loop arrive first
        async with self._flushing:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        store = self._store
        if store is None or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._wake.clear()
        if self._dropped:
            _log.warning("%s tenant log lines were dropped: the store is behind", self._dropped)
            self._dropped = 0
        try:
            ids = await store.append(batch, keep_lines=self.keep_lines)
        except Exception as error:  # the log must not take the service down
            _log.warning("could not store %s tenant log lines: %s", len(batch), error)
            return
        self.lines_written += len(batch)
        for line, line_id in zip(batch, ids, strict=True):
            followers = self._followers.get(line.tenant)
            if followers:
                stored = StoredLogLine(line_id, line.ts, line.level, line.template, line.message)
                for follower in followers:
                    follower.offer(stored)

    # -- reading (the loop) ----------------------------------------------------------------
    async def recent(self, tenant: TenantId, limit: int,
                     query: LogQuery | None = None) -> list[LogLine]:
        """The tenant's last ``limit`` lines that match ``query``, oldest first; includes
        lines written a moment ago."""
        await asyncio.sleep(0)  # lines already handed to the loop arrive first
        async with self._flushing:
            await self._flush_locked()
            if self._store is None:
                return []
            return await self._store.recent(tenant, query or LogQuery(), limit)

    async def recent_errors(self, tenant: TenantId) -> list[LogLine]:
        return await self.recent(tenant, self._errors_per_tenant, LogQuery(levels=("error",)))

    @contextlib.asynccontextmanager
    async def follow(self, tenant: TenantId, query: LogQuery,
                     backlog: int) -> AsyncIterator[tuple[list[LogLine], LogFollower]]:
        """The last ``backlog`` matching lines and a follower of the new ones, for the
        ``with`` block; the follower is already closed when the book is closed."""
        follower = LogFollower(self._follower_queue, query)
        if self._closed:
            follower.close()
        followers = self._followers.setdefault(tenant, set())
        try:
            async with self._flushing:
                await self._flush_locked()
                followers.add(follower)
                lines = [] if self._store is None else \
                    await self._store.recent(tenant, query, backlog)
            yield lines, follower
        finally:
            follower.close()
            followers.discard(follower)
            if not followers and self._followers.get(tenant) is followers:
                del self._followers[tenant]

    @property
    def follower_count(self) -> int:
        return sum(len(followers) for followers in self._followers.values())

    def close(self) -> None:
        """Ends every follower (the service is stopping); later followers end at once."""
        self._closed = True
        for followers in self._followers.values():
            for follower in followers:
                follower.close()
