"""The ``timers`` suite: expiry lateness under a million pending timers, memory, backlog drain.

- Lateness: a stream of keys expiring at a steady rate (1,000 per second) is fired by one
  thread worker while a million other expiries wait far in the future. The stream's keys are
  set by handlers (``ctx.kv.batch`` with ``expires_at``, so the worker arms them as in
  service). Each ``KeyExpiry`` handler prints its key; the log sink notes when the line
  arrives, so lateness is measured when the handler ran, not when the timer left the wheel.
  Baseline: the same stream in the same run with no other timers pending.
- Memory: how many timers the timer service holds (``status()["timers"]["held"]``) and the
  RSS of a worker process with the million timers pending, beside the same with none.
- Backlog: handlers set 100,000 keys with a ttl, the engine stops, the keys come due while
  it is down; keys per second from reopening it until every one has fired (no expiry row
  left in the store). Baseline: the store alone deleting the same number of rows, one
  transaction each (what firing them one by one would cost the store alone).

The million pending timers (and the baseline's backlog) are written with ``KVStore.apply`` in
large batches (the store's SQL-free API). Every database is a temporary SQLite file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from moonshard.bench.load import LoadResult, closed_loop
from moonshard.bench.measure import Figure
from moonshard.bench.scratch import scratch_sqlite
from moonshard.engine import Engine
from moonshard.events import Event
from moonshard.store import open_store
from moonshard.store.api import KVDelete, KVSet, Store
from moonshard.templates import Template
from moonshard.tenants import TenantId
from moonshard.timers.service import TimerConfig
from moonshard.values import JsonValue

__all__ = ["FULL", "QUICK", "TimersScale", "run_timers_bench"]

_SUITE = "timers"
# Sets keys with expiries from the event's [key, expires_at] pairs, as a handler would.
_SET_HANDLER = """
  SET = function(ctx, event)
    local ops = {}
    for i, item in ipairs(event.data.keys) do
      ops[i] = {"set", item[1], i, {expires_at = item[2]}}
    end
    return #ctx.kv.batch(ops)
  end,"""
_STREAM_TEMPLATE = "return {" + _SET_HANDLER + """
  PING = function(ctx, event) return true end,
  KeyExpiry = function(ctx, event) print("fired", event.data.key) end,
}"""
_STREAM_EVENTS = ("KeyExpiry", "PING", "SET")
# Keys a SET dispatch writes (ctx.kv.batch takes at most 100 ops).
_SET_BATCH = 100
_BACKLOG_TEMPLATE = "return {" + _SET_HANDLER + """
  KeyExpiry = function(ctx, event) end,
}"""
_BACKLOG_EVENTS = ("KeyExpiry", "SET")
# Far-future expiries are spread over this many seconds, starting a day from now.
_FAR_START, _FAR_SPREAD = 86_400.0, 30 * 86_400.0
# Keys per KVStore.apply call when writing timers in bulk.
_BATCH = 2_000
# Snowflake bases: each group of tenants has its own range.
_STREAM_BASE, _PENDING_BASE, _BACKLOG_BASE = 20_000, 30_000, 40_000
# Firings not seen this long after the last one was due count as late by that much.
_GRACE_SECONDS = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class TimersScale:
    """How big a run is."""

    pending: int
    pending_tenants: int
    rate: float
    stream_seconds: float
    stream_tenants: int
    backlog: int
    backlog_tenants: int
    drain_timeout: float = 600.0
    # How long an idle worker runs before its memory is read.
    settle_seconds: float = 2.0


FULL = TimersScale(pending=1_000_000, pending_tenants=1000, rate=1000.0, stream_seconds=20.0,
                   stream_tenants=100, backlog=100_000, backlog_tenants=1000)
QUICK = TimersScale(pending=50_000, pending_tenants=100, rate=1000.0, stream_seconds=3.0,
                    stream_tenants=20, backlog=5_000, backlog_tenants=50, drain_timeout=60.0,
                    settle_seconds=1.0)


def run_timers_bench(quick: bool = False, *, scale: TimersScale | None = None) -> list[Figure]:
    """Runs the suite at ``scale`` (default: ``QUICK`` or ``FULL``)."""
    return asyncio.run(_run(scale or (QUICK if quick else FULL)))


def _tenants(base: int, count: int) -> list[TenantId]:
    return [TenantId.guild((base + index) << 22) for index in range(count)]


async def _run(scale: TimersScale) -> list[Figure]:
    figures: list[Figure] = []
    stream = f"{scale.rate:,.0f}/s for {scale.stream_seconds:g} s"
    with scratch_sqlite("none-pending.db") as empty_url, \
            scratch_sqlite("pending.db") as pending_url:
        alone = await _stream(empty_url, scale)
        await _write_far_expiries(pending_url, scale)
        loaded = await _stream(pending_url, scale)
        with_pending = f"{scale.pending:,} pending"
        for fraction, name in ((0.5, "p50"), (0.99, "p99")):
            figures.append(Figure(
                _SUITE, f"expiry lateness {name}, {stream}, {with_pending}",
                loaded.lateness.latency(fraction) * 1e3, "ms",
                alone.lateness.latency(fraction) * 1e3, "the same stream with none pending"))
        figures.append(Figure(
            _SUITE, f"timers held in memory (most seen), {stream}, {with_pending}",
            float(loaded.held), "timers", float(alone.held),
            "the same stream with none pending"))
        idle_pending = await _idle_worker(pending_url, scale.settle_seconds)
        idle_empty = await _idle_worker(empty_url, scale.settle_seconds)
        figures.append(Figure(
            _SUITE, f"worker process RSS, idle, {with_pending}", idle_pending.rss / 2**20, "MiB",
            idle_empty.rss / 2**20, "the same worker with none pending"))
        figures.append(Figure(
            _SUITE, f"timers held in memory by an idle worker, {with_pending}",
            float(idle_pending.held), "timers", float(idle_empty.held),
            "the same worker with none pending"))
    figures.append(await _backlog_figure(scale))
    return figures


# -- writing timers ------------------------------------------------------------------------
async def _put_templates(store: Store, tenants: Sequence[TenantId], source: str,
                         events: tuple[str, ...]) -> None:
    template = Template("timers", {"init.lua": source}, events)
    for tenant in tenants:
        await store.templates.put(tenant, template)


async def _write_expiries(store: Store, tenants: Sequence[TenantId], dues: Sequence[float],
                          prefix: str) -> list[tuple[TenantId, str]]:
    """Key ``prefix:<n>`` of tenant ``n % len(tenants)`` expires at ``dues[n]``; gives the keys."""
    by_tenant: dict[TenantId, list[KVSet]] = {tenant: [] for tenant in tenants}
    keys: list[tuple[TenantId, str]] = []
    for number, due in enumerate(dues):
        tenant = tenants[number % len(tenants)]
        key = f"{prefix}:{number}"
        by_tenant[tenant].append(KVSet("default", key, number, expires_at=due))
        keys.append((tenant, key))
    now = time.time()
    for tenant, writes in by_tenant.items():
        for start in range(0, len(writes), _BATCH):
            await store.kv.apply(tenant, writes[start:start + _BATCH], now=now)
    return keys


async def _write_far_expiries(url: str, scale: TimersScale) -> None:
    now = time.time()
    step = _FAR_SPREAD / scale.pending
    dues = [now + _FAR_START + number * step for number in range(scale.pending)]
    async with await open_store(url) as store:
        await _write_expiries(store, _tenants(_PENDING_BASE, scale.pending_tenants), dues, "far")


# -- the stream ----------------------------------------------------------------------------
class _Firings:
    """A tenant log sink that notes when each line ``fired <TAB> <prefix>:<n>`` arrives."""

    __slots__ = ("_lock", "seen")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Key number -> when its handler printed.
        self.seen: dict[int, float] = {}

    def __call__(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        if message.startswith("fired\t"):
            arrived = time.time()
            with self._lock:
                self.seen.setdefault(int(message.rpartition(":")[2]), arrived)


@dataclasses.dataclass(frozen=True, slots=True)
class _StreamRun:
    lateness: LoadResult
    held: int


async def _stream(url: str, scale: TimersScale) -> _StreamRun:
    """Fires ``rate`` expiries per second for ``stream_seconds`` and measures each one."""
    tenants = _tenants(_STREAM_BASE, scale.stream_tenants)
    count = round(scale.rate * scale.stream_seconds)
    firings = _Firings()
    async with await open_store(url) as store:
        await _put_templates(store, tenants, _STREAM_TEMPLATE, _STREAM_EVENTS)
    async with Engine.open(url, topology="thread", workers=1, log=firings) as engine:
        for tenant in tenants:  # the VMs exist before the first timer is due
            await _dispatch_ok(engine, tenant, Event("PING"))
        # Time for the handlers to set every key before the first is due.
        first_due = time.time() + 1.5 + count / 5_000
        dues = [first_due + number / scale.rate for number in range(count)]
        await _set_keys(engine, tenants, dues, "stream")
        if time.time() > first_due:
            raise RuntimeError(f"setting the keys ended {time.time() - first_due:.1f} s after "
                               "the first was due: raise the lead time")
        held = 0
        deadline = dues[-1] + _GRACE_SECONDS
        while len(firings.seen) < count and time.time() < deadline:
            status = await engine.status()
            held = max(held, sum(int(worker["timers"]["held"]) for worker in status))
            await asyncio.sleep(0.25)
        ended = time.time()
    # A timer that never fired is at least as late as the wait for it.
    late = [firings.seen.get(number, ended) - due for number, due in enumerate(dues)]
    return _StreamRun(LoadResult(len(late), scale.stream_seconds, tuple(late)), held)


async def _dispatch_ok(engine: Engine, tenant: TenantId, event: Event) -> None:
    results = await engine.dispatch(tenant, event)
    if len(results) != 1 or not results[0].ok:
        raise RuntimeError(f"a benchmark dispatch of {event.name} to {tenant} failed: {results}")


async def _set_keys(engine: Engine, tenants: Sequence[TenantId], dues: Sequence[float],
                    prefix: str) -> None:
    """Key ``<prefix>:<n>``, of tenant ``n % len(tenants)``, expires at ``dues[n]``; set by SET
    dispatches of up to ``_SET_BATCH`` keys, a few tenants at a time."""
    batches: list[tuple[TenantId, list[JsonValue]]] = []
    for offset, tenant in enumerate(tenants):
        keys: list[JsonValue] = [[f"{prefix}:{number}", dues[number]]
                                 for number in range(offset, len(dues), len(tenants))]
        batches += [(tenant, keys[start:start + _SET_BATCH])
                    for start in range(0, len(keys), _SET_BATCH)]

    async def set_batch(lane: int, number: int) -> None:
        tenant, keys = batches[number]
        await _dispatch_ok(engine, tenant, Event("SET", {"keys": keys}))

    await closed_loop(set_batch, in_flight=min(16, len(tenants)), count=len(batches))


# -- an idle worker ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class _Idle:
    rss: int
    held: int


def _process_rss(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _idle_worker(url: str, settle_seconds: float) -> _Idle:
    """A process worker's RSS and held timers once its timer service has read its window."""
    async with Engine.open(url, topology="process", workers=1) as engine:
        await asyncio.sleep(settle_seconds)
        status = await engine.status()
        handle = engine.pool.workers[0].current
        if handle is None or handle.pid is None:
            raise RuntimeError("the worker process is not running")
        return _Idle(_process_rss(handle.pid), int(status[0]["timers"]["held"]))


# -- the backlog ---------------------------------------------------------------------------
async def _set_backlog(url: str, scale: TimersScale) -> None:
    """Handlers set keys with a ttl; the engine stops before they come due, and they come
    due while it is down."""
    tenants = _tenants(_BACKLOG_BASE, scale.backlog_tenants)
    async with await open_store(url) as store:
        await _put_templates(store, tenants, _BACKLOG_TEMPLATE, _BACKLOG_EVENTS)
    # This engine only sets the keys: a short timer window keeps it from holding them (the
    # engine measured afterwards has the default configuration).
    async with Engine.open(url, topology="thread", workers=1,
                           timers=TimerConfig(window_seconds=1.0)) as engine:
        # Time to set every key (and build each tenant's VM) before the first is due.
        due = time.time() + 3.0 + scale.backlog / 4_000 + len(tenants) * 0.005
        await _set_keys(engine, tenants, [due] * scale.backlog, "backlog")
        if time.time() > due:
            raise RuntimeError(f"setting the backlog ended {time.time() - due:.1f} s after it "
                               "was due: raise the lead time")
    await asyncio.sleep(max(0.0, due - time.time()))


async def _backlog_figure(scale: TimersScale) -> Figure:
    with scratch_sqlite("backlog.db") as url:
        await _set_backlog(url, scale)
        started = time.perf_counter()
        async with Engine.open(url, topology="thread", workers=1) as engine:
            deadline = started + scale.drain_timeout
            while await engine.store.timers.due_expiries(time.time(), 1):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the backlog did not drain in {scale.drain_timeout:g} s")
                await asyncio.sleep(0.05)
            drained = time.perf_counter() - started
    with scratch_sqlite("backlog-baseline.db") as url:
        tenants = _tenants(_BACKLOG_BASE, scale.backlog_tenants)
        async with await open_store(url) as store:
            keys = await _write_expiries(store, tenants, [time.time()] * scale.backlog,
                                         "backlog")

            async def delete(lane: int, number: int) -> None:
                tenant, key = keys[number]
                await store.kv.apply(tenant, [KVDelete("default", key)], now=time.time())
            floor = await closed_loop(delete, in_flight=64, count=len(keys))
    return Figure(_SUITE, f"expiry backlog of {scale.backlog:,} keys drained after a restart "
                  "(open to last fired; goal 10,000/s)", scale.backlog / drained, "keys/s",
                  scale.backlog / floor.seconds,
                  "the store alone: one delete transaction per key, 64 callers")
