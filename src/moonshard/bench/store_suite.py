"""The ``store`` suite: ``ctx.kv`` reads and committed handler runs, from Lua and from Python.

From Lua means the real path of a worker: a tenant VM runs a handler that calls
``ctx.kv.get`` (or ``ctx.kv.set``), each call a host request answered by a ``KVSession``, Lua
steps run on a thread pool as a worker runs them, and the run's writes committed by the
``HandlerRunner`` (one ``commit_run`` transaction). Its baseline is the raw store call
(``KVStore.get``, ``KVStore.apply`` of one ``KVSet``) at the same concurrency, in the same run.
The store engineer's ``store_bench`` (``KVSession`` from Python, beside plain ``sqlite3``) is
reported too.

Every figure is per process. No rate limit applies: the default ``kv`` rate (5,000 per second
per tenant) would otherwise cap one tenant's reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from moonshard.bench.load import closed_loop
from moonshard.bench.measure import Figure
from moonshard.bench.scratch import is_postgres, scratch_postgres, scratch_sqlite
from moonshard.bench.store_bench import CONCURRENCY, store_bench
from moonshard.events import Event
from moonshard.host.ratelimit import GcraLimiter
from moonshard.host.runner import HandlerRunner
from moonshard.limits import Limits
from moonshard.sandbox.driver import StepRunner
from moonshard.sandbox.loading import build_vm
from moonshard.sandbox.vm import TenantVM
from moonshard.store import open_store
from moonshard.store.api import KVSet, Store
from moonshard.store.baseline import sqlite_point_reads
from moonshard.store.sqlite import SqliteStore
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["FULL", "QUICK", "StoreScale", "run_store_suite"]

_SUITE = "store"
_T = TypeVar("_T")
_TEMPLATE = MappingProxyType({"init.lua": """
return {
  GETS = function(ctx, event)
    local n = event.data.n
    for i = 1, n do ctx.kv.get("key:" .. (i * 7919) % event.data.keys) end
    return n
  end,
  COMMIT = function(ctx, event) ctx.kv.set("run:" .. event.data.i % 1000, event.data.i) end,
}"""})
_EVENTS = ("COMMIT", "GETS")
# Keys each tenant holds for the reads; every read finds its key.
_KEYS = 200
# Gets per handler run: a run's own start and end cost less than its reads.
_GETS_PER_RUN = 100
# Lua steps run on this many threads, as in a worker (WorkerConfig.lua_threads).
_LUA_THREADS = 4


@dataclasses.dataclass(frozen=True, slots=True)
class StoreScale:
    """Seconds per measurement from Lua, and the seconds given to ``store_bench`` in all."""

    phase_seconds: float
    store_bench_seconds: float


FULL = StoreScale(phase_seconds=2.0, store_bench_seconds=12.0)
QUICK = StoreScale(phase_seconds=0.3, store_bench_seconds=1.8)


def run_store_suite(quick: bool = False, database_url: str | None = None, *,
                    scale: StoreScale | None = None) -> list[Figure]:
    """Measures on a temporary SQLite file, then on ``database_url`` (PostgreSQL) if given."""
    return asyncio.run(_run(scale or (QUICK if quick else FULL), database_url))


async def _run(scale: StoreScale, database_url: str | None) -> list[Figure]:
    if database_url is not None and not is_postgres(database_url):
        raise ValueError("--database-url takes a postgresql:// URL; SQLite is always measured")
    figures: list[Figure] = []
    with scratch_sqlite() as url:
        figures += await _measure_database("SQLite", url, scale)
    if database_url is not None:
        async with scratch_postgres(database_url) as url:
            figures += await _measure_database("PostgreSQL", url, scale)
    return figures


async def _measure_database(label: str, url: str, scale: StoreScale) -> list[Figure]:
    figures, raw = await _lua_figures(label, url, scale.phase_seconds)
    report = await store_bench(url, scale.store_bench_seconds)
    return figures + _store_bench_figures(label, report, raw)


# -- from Lua --------------------------------------------------------------------------------
class _Tenant:
    """One benchmark tenant: its VM, its template set and its (unlimited) rate limiter."""

    __slots__ = ("limiter", "template_set", "tenant", "vm")

    def __init__(self, tenant: TenantId, template_set: TemplateSet, vm: TenantVM) -> None:
        self.tenant = tenant
        self.template_set = template_set
        self.vm = vm
        self.limiter = GcraLimiter({})


def _quiet(level: str, template: str, message: str) -> None:
    """Benchmarks discard template output."""


def _thread_steps(executor: concurrent.futures.Executor) -> StepRunner[object]:
    """Runs each Lua step on ``executor``, as a worker does."""
    async def run_step(step: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(executor, step)
    return run_step


_RawRates = dict[tuple[str, int], float]
"""Raw store calls per second by (``"get"`` or ``"commit"``, callers)."""


async def _lua_figures(label: str, url: str, seconds: float) -> tuple[list[Figure], _RawRates]:
    limits = Limits()
    base = random.randrange(1, 2**40)
    executor = concurrent.futures.ThreadPoolExecutor(_LUA_THREADS,
                                                     thread_name_prefix="bench-lua")
    run_step = _thread_steps(executor)
    figures: list[Figure] = []
    raw: _RawRates = {}
    try:
        async with await open_store(url) as store:
            tenants = [await _new_tenant(store, TenantId.user(base + index), limits, run_step)
                       for index in range(CONCURRENCY)]
            bench = _LuaKV(store, limits, run_step, seconds)
            for callers in (1, CONCURRENCY):
                lua, raw["get", callers] = await bench.gets(tenants[:callers])
                figures.append(Figure(
                    _SUITE, f"{label}: ctx.kv.get from Lua, {_callers(callers)}", lua, "gets/s",
                    raw["get", callers], f"raw KVStore.get, {callers} caller(s)"))
                if callers == 1 and isinstance(store, SqliteStore):
                    figures.append(await _beside_plain_sqlite3(
                        label, bench, tenants[0], store.path, seconds))
            for callers in (1, CONCURRENCY):
                lua, raw["commit", callers] = await bench.commits(tenants[:callers])
                figures.append(Figure(
                    _SUITE, f"{label}: committed handler runs (one ctx.kv.set), "
                    f"{_callers(callers)}", lua, "runs/s", raw["commit", callers],
                    f"raw KVStore.apply of one set, {callers} caller(s)"))
    finally:
        executor.shutdown(wait=True)
    return figures, raw


# Rounds of the ctx.kv.get ÷ plain sqlite3 figure: each side's best round is kept, so a
# moment of other work on a shared machine does not decide the ratio.
_PLAIN_ROUNDS = 3


async def _beside_plain_sqlite3(label: str, bench: _LuaKV, slot: _Tenant, path: Path,
                                seconds: float) -> Figure:
    """``ctx.kv.get`` from Lua for one tenant beside plain ``sqlite3`` reading the same keys
    on the calling thread (store_bench's baseline loop), in alternating rounds."""
    keys = [f"key:{(number * 7919) % _KEYS}" for number in range(1, _KEYS + 1)]
    lua = plain = 0.0
    for _ in range(_PLAIN_ROUNDS):
        lua = max(lua, await bench.lua_gets([slot]))
        plain = max(plain, await asyncio.to_thread(
            sqlite_point_reads, path, slot.tenant, keys, seconds))
    return Figure(_SUITE, f"{label}: ctx.kv.get from Lua, 1 tenant, beside plain sqlite3 "
                  f"(best of {_PLAIN_ROUNDS} alternating rounds each)", lua, "gets/s", plain,
                  "plain sqlite3 point read on the calling thread, 1 caller")


def _quiet_tenant(tenant: TenantId, level: str, template: str, message: str) -> None:
    """The benchmark's handlers log nothing worth reading."""


def _callers(count: int) -> str:
    return "1 tenant" if count == 1 else f"{count} tenants at once"


async def _new_tenant(store: Store, tenant: TenantId, limits: Limits,
                      run_step: StepRunner[object]) -> _Tenant:
    await store.kv.apply(tenant, [KVSet("default", f"key:{index}", {"n": index, "text": "x" * 32})
                                  for index in range(_KEYS)], now=time.time())
    template = Template("kvbench", _TEMPLATE, _EVENTS, version=1)
    template_set = TemplateSet(tenant, 1, (template,))
    return _Tenant(tenant, template_set, await build_vm(template_set, limits, _quiet, run_step))


class _LuaKV:
    """Each measurement: (from Lua, raw store call) per second, one caller per tenant."""

    __slots__ = ("_limits", "_run_step", "_seconds", "_store")

    def __init__(self, store: Store, limits: Limits, run_step: StepRunner[object],
                 seconds: float) -> None:
        self._store = store
        self._limits = limits
        self._run_step = run_step
        self._seconds = seconds

    async def _run_handler(self, slot: _Tenant, event: Event) -> None:
        runner = HandlerRunner(self._store, self._limits, _quiet_tenant)
        results = await runner.run_event(slot.vm, slot.template_set, event, slot.limiter,
                                         self._run_step)
        if not results or not all(result.ok for result in results):
            raise RuntimeError(f"the benchmark handler failed: {results}")

    async def _rate(self, call: Callable[[int, int], Awaitable[object]], callers: int) -> float:
        return (await closed_loop(call, in_flight=callers, seconds=self._seconds)).per_second

    async def lua_gets(self, tenants: list[_Tenant]) -> float:
        """``ctx.kv.get`` from Lua per second, one handler run at a time per tenant."""
        event_data: JsonValue = {"n": _GETS_PER_RUN, "keys": _KEYS}

        async def from_lua(lane: int, number: int) -> None:
            await self._run_handler(tenants[lane], Event("GETS", event_data))

        return await self._rate(from_lua, len(tenants)) * _GETS_PER_RUN

    async def gets(self, tenants: list[_Tenant]) -> tuple[float, float]:
        async def raw(lane: int, number: int) -> None:
            key = f"key:{(number * 7919) % _KEYS}"
            await self._store.kv.get(tenants[lane].tenant, "default", key, now=time.time())

        lua = await self.lua_gets(tenants)
        return lua, await self._rate(raw, len(tenants))

    async def commits(self, tenants: list[_Tenant]) -> tuple[float, float]:
        async def from_lua(lane: int, number: int) -> None:
            await self._run_handler(tenants[lane], Event("COMMIT", {"i": number}))

        async def raw(lane: int, number: int) -> None:
            write = KVSet("default", f"run:{number % 1000}", number)
            await self._store.kv.apply(tenants[lane].tenant, [write], now=time.time())

        return await self._rate(from_lua, len(tenants)), await self._rate(raw, len(tenants))


# -- the store engineer's KVSession benchmark ------------------------------------------------
def _store_bench_figures(label: str, report: dict[str, object], raw: _RawRates) -> list[Figure]:
    """``store_bench``'s figures, beside plain ``sqlite3`` on SQLite (one caller on one
    connection, the store's ceiling); on PostgreSQL, which has no such baseline, beside the raw
    store call measured above at the same concurrency."""
    plain = report["baseline_raw_sqlite3"]
    assert isinstance(plain, dict)
    figures = []
    for kind, section, plain_key, what, unit in (
            ("get", "gets_per_s", "gets_per_s", "KVSession.get", "gets/s"),
            ("commit", "committed_runs_per_s", "commits_per_s", "KVSession set + commit",
             "runs/s")):
        measured = report[section]
        assert isinstance(measured, dict)
        for key, callers in (("one_caller", 1), (f"{CONCURRENCY}_callers", CONCURRENCY)):
            if plain.get(plain_key) is not None:
                baseline = float(plain[plain_key])
                baseline_name = "plain sqlite3 on the calling thread, 1 caller"
            else:
                baseline = raw[kind, callers]
                baseline_name = ("raw KVStore.get" if kind == "get" else
                                 "raw KVStore.apply of one set") + f", {callers} caller(s)"
            figures.append(Figure(
                _SUITE, f"{label}: {what} from Python (store_bench), {callers} caller(s)",
                float(measured[key]), unit, baseline, baseline_name))
    return figures
