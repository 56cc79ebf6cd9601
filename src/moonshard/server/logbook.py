"""Tenants' log lines as the service keeps them: recent lines per tenant, and live followers.

A ``LogBook`` is the ``log=`` sink of ``Engine.open``. Thread workers call it from their own
threads, so every line is handed to the server's event loop with ``call_soon_threadsafe``;
all state is then touched on that loop only. Retention is bounded: so many lines per tenant,
so many bytes in all (the tenants written to least recently lose their lines first).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator

from moonshard.tenants import TenantId

__all__ = ["LogBook", "LogFollower", "LogLine"]

# Per-line bookkeeping counted besides the text, so many empty lines still use the budget.
_LINE_OVERHEAD = 64


@dataclasses.dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a tenant's log."""

    ts: float
    level: str
    template: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {"ts": self.ts, "level": self.level, "template": self.template,
                "message": self.message}

    @property
    def size(self) -> int:
        return len(self.message) + len(self.template) + _LINE_OVERHEAD


class _TenantLog:
    __slots__ = ("bytes", "errors", "lines")

    def __init__(self, max_lines: int, max_errors: int) -> None:
        self.lines: collections.deque[LogLine] = collections.deque(maxlen=max_lines)
        self.errors: collections.deque[LogLine] = collections.deque(maxlen=max_errors)
        self.bytes = 0


class LogFollower:
    """A live subscription to one tenant's new lines; iterate it, it ends when closed."""

    __slots__ = ("_closed", "_dropped", "_queue")

    def __init__(self, max_queued: int) -> None:
        if max_queued < 3:
            raise ValueError("a follower needs room for at least 3 lines")
        self._queue: asyncio.Queue[LogLine | None] = asyncio.Queue(max_queued)
        self._dropped = 0
        self._closed = False

    def offer(self, line: LogLine) -> None:
        if self._closed:
            return
        # Two places stay free: one for the "lines skipped" note, one for the end marker.
        if self._queue.qsize() >= self._queue.maxsize - 2:
            # A reader slower than the tenant's output loses lines, never holds up the book.
            self._dropped += 1
            return
        if self._dropped:
            self._queue.put_nowait(LogLine(line.ts, "warn", "-",
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
    """Recent log lines per tenant, with followers. Create it on the loop that reads it."""

    def __init__(
        self, *, lines_per_tenant: int = 1000, errors_per_tenant: int = 20,
        max_tenants: int = 10_000, max_bytes: int = 64 * 1024 * 1024,
        follower_queue: int = 1000, max_followers: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines_per_tenant = lines_per_tenant
        self._errors_per_tenant = errors_per_tenant
        self._max_tenants = max_tenants
        self._max_bytes = max_bytes
        self._follower_queue = follower_queue
        self.max_followers = max_followers
        self._clock = clock
        # Least recently written first, so eviction takes the quietest tenants.
        self._tenants: collections.OrderedDict[TenantId, _TenantLog] = collections.OrderedDict()
        self._followers: dict[TenantId, set[LogFollower]] = {}
        self._bytes = 0
        self._closed = False
        self.lines_written = 0

    # -- writing (any thread) --------------------------------------------------------------
    def __call__(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        """The engine's ``log=`` sink: safe to call from any thread."""
        line = LogLine(self._clock(), level, template, message)
        # RuntimeError: the loop has closed; the service is gone, and its log with it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._append, tenant, line)

    def _append(self, tenant: TenantId, line: LogLine) -> None:
        log = self._tenants.get(tenant)
        if log is None:
            log = self._tenants[tenant] = _TenantLog(self._lines_per_tenant,
                                                     self._errors_per_tenant)
        else:
            self._tenants.move_to_end(tenant)
        if len(log.lines) == log.lines.maxlen:
            dropped = log.lines[0].size
            log.bytes -= dropped
            self._bytes -= dropped
        log.lines.append(line)
        log.bytes += line.size
        self._bytes += line.size
        if line.level == "error":
            log.errors.append(line)
        self.lines_written += 1
        self._evict()
        for follower in self._followers.get(tenant, ()):
            follower.offer(line)

    def _evict(self) -> None:
        while len(self._tenants) > 1 and (len(self._tenants) > self._max_tenants
                                          or self._bytes > self._max_bytes):
            _, log = self._tenants.popitem(last=False)
            self._bytes -= log.bytes

    # -- reading (the loop) ----------------------------------------------------------------
    def recent(self, tenant: TenantId, limit: int) -> list[LogLine]:
        """The tenant's last ``limit`` lines, oldest first."""
        log = self._tenants.get(tenant)
        if log is None or limit <= 0:
            return []
        lines = list(log.lines)
        return lines[-limit:]

    def recent_errors(self, tenant: TenantId) -> list[LogLine]:
        log = self._tenants.get(tenant)
        return list(log.errors) if log is not None else []

    @contextlib.contextmanager
    def follow(self, tenant: TenantId) -> Iterator[LogFollower]:
        """A follower of the tenant's new lines for the ``with`` block; already closed when
        the book is closed."""
        follower = LogFollower(self._follower_queue)
        if self._closed:
            follower.close()
        followers = self._followers.setdefault(tenant, set())
        followers.add(follower)
        try:
            yield follower
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
