"""Helpers of the store suite (a plain module: conftest files cannot be imported reliably)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import asyncpg

from moonshard.host.kv import KVSession
from moonshard.values import JsonValue

POSTGRES_URL = os.environ.get(
    "MOONSHARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class Run(Protocol):
    """A KVSession as the tests drive it: arguments and answers are whatever a template gives
    and gets (typed Any, since the tests also pass values no template could)."""

    async def call(self, op: str, args: Sequence[Any]) -> Any: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    @property
    def pending_writes(self) -> int: ...


SessionFactory = Callable[..., Run]


def records(found: JsonValue) -> list[dict[str, JsonValue]]:
    """``find``'s answer, checked to be a list of records."""
    assert isinstance(found, list)
    out = []
    for record in found:
        assert isinstance(record, dict)
        out.append(record)
    return out


def keys_of(found: JsonValue) -> list[str]:
    return [str(record["key"]) for record in records(found)]


# -- raw access for the tests that must look behind the store ----------------------------------
async def raw_fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    """Runs one statement directly on the database behind ``url`` and returns its rows."""
    if url.startswith("sqlite"):
        from moonshard.store import sqlite_path

        path, _ = sqlite_path(url)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    from moonshard.store.postgres import split_schema

    dsn, schema = split_schema(url)
    settings = {"search_path": f'"{schema}"'} if schema else {}
    pg = await asyncpg.connect(dsn, server_settings=settings)
    try:
        return [tuple(row) for row in await pg.fetch(sql)]
    finally:
        await pg.close()


async def table_names(url: str) -> set[str]:
    if url.startswith("sqlite"):
        rows = await raw_fetch(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await raw_fetch(
            url, "SELECT table_name FROM information_schema.tables "
                 "WHERE table_schema = current_schema()")
    return {str(row[0]) for row in rows}


async def everything_stored(url: str) -> str:
    """Every row of every table, as text: for checking what the database holds."""
    parts = []
    for table in sorted(await table_names(url)):
        parts += [repr(row) for row in await raw_fetch(url, f"SELECT * FROM {table}")]
    return "\n".join(parts)


# -- processes (spawned: each imports this module by name) ------------------------------------
def incr_in_process(url: str, tenant: str, key: str, times: int, barrier: Any) -> None:
    """Opens the store (after every process is ready), then ``times`` runs of one incr each."""
    asyncio.run(_incr_many(url, tenant, key, times, barrier))


async def _incr_many(url: str, tenant: str, key: str, times: int, barrier: Any) -> None:
    from moonshard.host.ratelimit import GcraLimiter
    from moonshard.limits import Limits
    from moonshard.store import open_store
    from moonshard.tenants import TenantId

    await asyncio.to_thread(barrier.wait)
    store = await open_store(url)
    try:
        for _ in range(times):
            run = KVSession(store.kv, TenantId.parse(tenant), Limits(), GcraLimiter({}))
            await run.call("incr", [key])
            await run.commit()
    finally:
        await store.close()


async def run_processes(target: Callable[..., None], args: tuple[Any, ...], count: int,
                        join_seconds: float = 240.0) -> None:
    """Runs ``count`` spawned processes of ``target(*args, barrier)`` and checks they succeed."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    processes = [context.Process(target=target, args=(*args, barrier)) for _ in range(count)]
    for process in processes:
        process.start()

    def join() -> None:
        for process in processes:
            process.join(join_seconds)

    try:
        await asyncio.to_thread(join)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in processes] == [0] * count
