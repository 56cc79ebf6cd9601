"""Store benchmark: committed ``ctx.kv`` runs per second and reads per second.

Each figure is measured twice, by one caller at a time (latency-bound) and by many concurrent
callers (a worker with many busy tenants), beside a baseline in the same run (SQLite only):
the store's own SQL run with plain ``sqlite3`` on the calling thread, the limit this store
could reach with no thread hand-off. The benchmark writes to fresh random tenants; point it
at a throwaway database.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.limits import Limits
from moonshard.store import open_store, sqlite_path
from moonshard.store.api import KVStore
from moonshard.store.baseline import sqlite_baseline
from moonshard.tenants import TenantId

__all__ = ["CONCURRENCY", "run_store_bench", "store_bench"]

CONCURRENCY = 32
_READ_KEYS = 1000


def run_store_bench(database_url: str, seconds: float) -> dict[str, object]:
    """Runs ``store_bench`` on a new event loop (for callers without one)."""
    return asyncio.run(store_bench(database_url, seconds))


async def store_bench(database_url: str, seconds: float) -> dict[str, object]:
    """Measures for about ``seconds`` in all; returns the figures as a JSON-ready dict."""
    phase = max(seconds, 0.6) / 6
    store = await open_store(database_url)
    try:
        kv = store.kv
        base = random.randrange(1, 2**40)
        tenants = [TenantId.user(base + index) for index in range(CONCURRENCY)]
        # No rate limit: this measures the store, not the limiter.
        limiter = GcraLimiter({})
        limits = Limits()
        await _fill(kv, tenants[0], limiter, limits)

        async def commit_run(tenant: TenantId, index: int) -> None:
            session = KVSession(kv, tenant, limits, limiter)
            await session.set(f"run:{index % _READ_KEYS}", index)
            await session.commit()

        async def get_one(tenant: TenantId, index: int) -> None:
            session = KVSession(kv, tenants[0], limits, limiter)
            await session.get(f"key:{(index * 7919) % _READ_KEYS}")

        runs_one = await _rate(lambda i: commit_run(tenants[0], i), 1, phase)
        runs_many = await _rate_per_tenant(commit_run, tenants, phase)
        gets_one = await _rate(lambda i: get_one(tenants[0], i), 1, phase)
        gets_many = await _rate_per_tenant(get_one, tenants, phase)
    finally:
        await store.close()
    raw_commits: float | None = None
    raw_gets: float | None = None
    if database_url.lower().startswith("sqlite:"):
        path, _ = sqlite_path(database_url)
        raw_commits, raw_gets = await asyncio.to_thread(
            sqlite_baseline, path, TenantId.user(base + CONCURRENCY), phase)
    return {
        "database": database_url.partition(":")[0],
        "concurrency": CONCURRENCY,
        "committed_runs_per_s": {"one_caller": runs_one, f"{CONCURRENCY}_callers": runs_many},
        "gets_per_s": {"one_caller": gets_one, f"{CONCURRENCY}_callers": gets_many},
        "baseline_raw_sqlite3": {"commits_per_s": raw_commits, "gets_per_s": raw_gets},
    }


async def _fill(kv: KVStore, tenant: TenantId, limiter: GcraLimiter, limits: Limits) -> None:
    session = KVSession(kv, tenant, limits, limiter)
    for start in range(0, _READ_KEYS, 100):
        await session.batch([["set", f"key:{index}", {"n": index, "text": "x" * 32}]
                             for index in range(start, start + 100)])
    await session.commit()


async def _rate(
    work: Callable[[int], Awaitable[None]], callers: int, seconds: float,
) -> float:
    """Calls per second of ``work`` by ``callers`` concurrent loops during ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() < deadline:
            await work(index)
            index += callers
            done += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for offset in range(callers):
            group.create_task(caller(offset))
    return round(done / (time.perf_counter() - started), 1)


async def _rate_per_tenant(
    work: Callable[[TenantId, int], Awaitable[None]], tenants: list[TenantId], seconds: float,
) -> float:
    """Like ``_rate`` with one caller per tenant (tenants run concurrently, as in a worker)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller(tenant: TenantId) -> None:
        nonlocal done
        index = 0
        while time.perf_counter() < deadline:
            await work(tenant, index)
            index += 1
            done += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for tenant in tenants:
            group.create_task(caller(tenant))
    return round(done / (time.perf_counter() - started), 1)
