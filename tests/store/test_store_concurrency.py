"""No lost update: increments from several processes, and from many runs of one process."""

from __future__ import annotations

import asyncio
import time

from store_support import incr_in_process, run_processes

from moonshard.errors import HostCallError
from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.limits import Limits
from moonshard.store.api import KVIncr, KVSet, Store
from moonshard.store.migrations import MIGRATIONS
from moonshard.tenants import TenantId

PROCESSES = 4
INCREMENTS = 200


async def test_incr_from_several_processes_loses_nothing(
    store: Store, store_url: str, tenant: TenantId,
) -> None:
    # Every process starts on the missing key at once, so the first increments also race to
    # create it.
    await run_processes(incr_in_process, (store_url, str(tenant), "hits", INCREMENTS), PROCESSES)
    record = await store.kv.get(tenant, "default", "hits", now=time.time())
    assert record is not None
    assert record.value == PROCESSES * INCREMENTS
    assert record.version == PROCESSES * INCREMENTS


async def test_processes_opening_a_new_database_at_once(store_url: str) -> None:
    """Migrations run once even when several processes open an empty database together."""
    await run_processes(incr_in_process, (store_url, "guild:1", "n", 5), PROCESSES)
    from store_support import raw_fetch


    rows = await raw_fetch(store_url, "SELECT version FROM schema_version ORDER BY version")
    assert [row[0] for row in rows] == [migration.version for migration in MIGRATIONS]


async def test_concurrent_runs_in_one_process(store: Store, tenant: TenantId) -> None:
    async def one_run() -> None:
        run = KVSession(store.kv, tenant, Limits(), GcraLimiter({}))
        await run.call("incr", ["n", 2])
        await run.call("incr", ["m"])
        await run.commit()

    await asyncio.gather(*(one_run() for _ in range(100)))
    reader = KVSession(store.kv, tenant, Limits(), GcraLimiter({}))
    assert await reader.call("get", ["n"]) == 200
    assert await reader.call("get", ["m"]) == 100


async def test_one_failing_commit_among_many_spoils_only_itself(
    store: Store, tenant: TenantId,
) -> None:
    """Commits that run together (SQLite groups them in one transaction) fail one by one."""
    now = time.time()
    await store.kv.apply(tenant, [KVSet("default", "text", "x")], now=now)

    async def good(index: int) -> None:
        await store.kv.apply(tenant, [KVSet("default", f"k{index}", index)], now=now)

    async def bad() -> None:
        await store.kv.apply(
            tenant, [KVSet("default", "spoiled", 1), KVIncr("default", "text", 1)], now=now)

    outcomes = await asyncio.gather(
        *(good(index) if index % 3 else bad() for index in range(30)), return_exceptions=True)
    failures = [outcome for outcome in outcomes if outcome is not None]
    assert len(failures) == 10
    assert all(isinstance(failure, HostCallError) for failure in failures)
    assert await store.kv.get(tenant, "default", "spoiled", now=now) is None
    assert await store.kv.count(tenant, None, now=now) == 21
