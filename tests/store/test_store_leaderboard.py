"""``ctx.kv.top`` and ``ctx.kv.rank`` (TEMPLATES.md): order, ties, paging, the run's own
writes, the index that keeps a top-10 of 100,000 keys one range read, and migration 4."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import asyncpg
import pytest
from store_support import FakeClock, SessionFactory, keys_of, raw_fetch

from moonshard.errors import HostCallError
from moonshard.store import kvlogic, open_store, sqlite_path
from moonshard.store.api import KVSet, Store
from moonshard.store.migrations import MIGRATIONS
from moonshard.store.postgres import split_schema
from moonshard.tenants import TenantId


async def committed(session: SessionFactory, op: str, *args: Any) -> Any:
    run = session()
    result = await run.call(op, list(args))
    await run.commit()
    return result


async def scores(session: SessionFactory, values: dict[str, Any], scope: str = "xp") -> None:
    run = session()
    for key, value in values.items():
        await run.call("set", [key, value, {"scope": scope}])
    await run.commit()


XP = {"ann": 30, "bob": 50, "cat": 30, "dan": 7.5, "eve": -2, "fay": 30,
      "name": "not a number", "flag": True, "list": [1, 2], "map": {"n": 1}}


async def test_top_orders_highest_first_ties_by_key(session: SessionFactory) -> None:
    await scores(session, XP)
    run = session()
    top = await run.call("top", [{"scope": "xp"}])
    assert keys_of(top) == ["bob", "ann", "cat", "fay", "dan", "eve"]
    assert [record["value"] for record in top] == [50, 30, 30, 30, 7.5, -2]
    assert set(top[0]) == {"key", "scope", "value", "version", "created_at", "updated_at",
                           "expires_at", "resume"}
    assert top[0]["scope"] == "xp"
    # Booleans, strings and tables never rank; other scopes are apart.
    assert await run.call("top", []) == []
    assert keys_of(await run.call("top", [{"scope": "xp", "limit": 2}])) == ["bob", "ann"]


async def test_rank_is_the_position_in_tops_order(session: SessionFactory) -> None:
    await scores(session, XP)
    run = session()
    expected = {"bob": 1, "ann": 2, "cat": 3, "fay": 4, "dan": 5, "eve": 6}
    for key, position in expected.items():
        assert await run.call("rank", [key, {"scope": "xp"}]) == position
    for key in ("name", "flag", "list", "map", "missing"):
        assert await run.call("rank", [key, {"scope": "xp"}]) is None
    assert await run.call("rank", ["bob"]) is None  # another scope


async def test_paging_with_after(session: SessionFactory) -> None:
    await scores(session, {f"u{index:03}": index % 7 for index in range(60)})
    run = session()
    whole = keys_of(await run.call("top", [{"scope": "xp", "limit": 100}]))
    assert len(whole) == 60
    paged: list[str] = []
    after = None
    while True:
        opts: dict[str, Any] = {"scope": "xp", "limit": 7}
        if after is not None:
            opts["after"] = after
        page = keys_of(await run.call("top", [opts]))
        paged += page
        if len(page) < 7:
            break
        after = page[-1]
    assert paged == whole
    # Ties of one number page by key, across page ends.
    sixes = [key for key in whole if int(key[1:]) % 7 == 6]
    assert sixes == sorted(sixes)
    assert whole[:len(sixes)] == sixes
    for position, key in enumerate(whole, start=1):
        assert await run.call("rank", [key, {"scope": "xp"}]) == position


async def test_after_must_be_on_the_leaderboard(session: SessionFactory) -> None:
    await scores(session, XP)
    run = session()
    with pytest.raises(HostCallError,
                       match=re.escape("opts.after: key 'name' is not on the leaderboard")):
        await run.call("top", [{"scope": "xp", "after": "name"}])
    with pytest.raises(HostCallError,
                       match=re.escape("opts.after: key 'gone' is not on the leaderboard")):
        await run.call("top", [{"scope": "xp", "after": "gone"}])
    with pytest.raises(HostCallError, match=re.escape("opts.after must be a key")):
        await run.call("top", [{"scope": "xp", "after": 3}])
    for bad in (0, 101, 2.5, "3"):
        with pytest.raises(HostCallError, match=re.escape("opts.limit must be")):
            await run.call("top", [{"limit": bad}])
    with pytest.raises(HostCallError, match=re.escape("unknown option 'prefix'")):
        await run.call("top", [{"prefix": "a"}])
    assert keys_of(await run.call("top", [{"scope": "xp", "after": "eve"}])) == []


async def test_the_runs_own_writes_move_it_on_the_board(session: SessionFactory) -> None:
    await scores(session, XP)
    run = session()
    await run.call("incr", ["dan", 100, {"scope": "xp"}])          # 107.5: now first
    await run.call("delete", ["bob", {"scope": "xp"}])              # gone
    await run.call("set", ["name", 31, {"scope": "xp"}])            # a string becomes 31
    await run.call("set", ["ann", "retired", {"scope": "xp"}])      # a number becomes text
    await run.call("set", ["new", 30, {"scope": "xp"}])             # a new key, tied at 30
    expected = ["dan", "name", "cat", "fay", "new", "eve"]
    assert keys_of(await run.call("top", [{"scope": "xp"}])) == expected
    assert keys_of(await run.call("top", [{"scope": "xp", "after": "cat", "limit": 2}])) == [
        "fay", "new"]
    for position, key in enumerate(expected, start=1):
        assert await run.call("rank", [key, {"scope": "xp"}]) == position
    assert await run.call("rank", ["bob", {"scope": "xp"}]) is None
    assert await run.call("rank", ["ann", {"scope": "xp"}]) is None
    await run.rollback()
    # Nothing of it was committed.
    reader = session()
    assert keys_of(await reader.call("top", [{"scope": "xp"}])) == [
        "bob", "ann", "cat", "fay", "dan", "eve"]


async def test_expired_keys_leave_the_board(session: SessionFactory, clock: FakeClock) -> None:
    await scores(session, {"a": 1, "b": 2})
    await committed(session, "set", "c", 3, {"scope": "xp", "ttl": 10})
    assert keys_of(await committed(session, "top", {"scope": "xp"})) == ["c", "b", "a"]
    clock.advance(11)
    run = session()
    assert keys_of(await run.call("top", [{"scope": "xp"}])) == ["b", "a"]
    assert await run.call("rank", ["a", {"scope": "xp"}]) == 2
    assert await run.call("rank", ["c", {"scope": "xp"}]) is None


async def test_numbers_are_compared_as_numbers(session: SessionFactory) -> None:
    await scores(session, {"i": 10, "f": 9.99, "big": 2**62, "neg": -(2**62), "z": 0,
                           "tiny": 1e-300, "huge": 1e300})
    assert keys_of(await committed(session, "top", {"scope": "xp"})) == [
        "huge", "big", "i", "f", "tiny", "z", "neg"]


async def test_incr_keeps_the_board_up_to_date(session: SessionFactory) -> None:
    for _ in range(3):
        await committed(session, "incr", "a", 1, {"scope": "xp"})
    await committed(session, "incr", "b", 2, {"scope": "xp"})
    await committed(session, "batch", [["incr", "b", 5, {"scope": "xp"}],
                                       ["set", "c", 4, {"scope": "xp"}]])
    assert [(record["key"], record["value"]) for record in
            await committed(session, "top", {"scope": "xp"})] == [("b", 7), ("c", 4), ("a", 3)]


# -- a big scope: the index does the work -----------------------------------------------------
BIG = 100_000


async def fill_big_scope(store_url: str, dialect: str) -> None:
    """100,000 numeric keys (and some text ones) in scope "big" of guild:4242, written
    directly: through the store it would take minutes on PostgreSQL."""
    columns = ("tenant_kind, tenant_id, scope, key, value, version, created_at, updated_at,"
               " resume, num_value")
    if dialect == "sqlite":
        path, _ = sqlite_path(store_url)
        lite = sqlite3.connect(path, isolation_level=None)
        try:
            lite.execute(
                f"INSERT INTO kv ({columns}) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                f"SELECT i + 1 FROM n WHERE i < {BIG}) SELECT 'guild', '4242', 'big',"
                " printf('u%06d', i), CAST(i % 1000 AS TEXT), 1, 0, 0, 0, i % 1000 FROM n")
            lite.execute(
                f"INSERT INTO kv ({columns}) SELECT 'guild', '4242', 'big', 'text' || key,"
                " '\"x\"', 1, 0, 0, 0, NULL FROM kv WHERE scope = 'big' AND key < 'u001000'")
        finally:
            lite.close()
        return
    dsn, schema = split_schema(store_url)
    pg = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        await pg.execute(
            f"INSERT INTO kv ({columns}) SELECT 'guild', '4242', 'big', 'u' || lpad(i::text, 6,"
            " '0'), (i % 1000)::text, 1, 0, 0, false, i % 1000"
            f" FROM generate_series(1, {BIG}) AS i")
        await pg.execute(
            f"INSERT INTO kv ({columns}) SELECT 'guild', '4242', 'big', 'text' || key, '\"x\"',"
            " 1, 0, 0, false, NULL FROM kv WHERE scope = 'big' AND key < 'u001000'")
    finally:
        await pg.close()


def expected_top(count: int) -> list[str]:
    """The first ``count`` of BIG keys valued ``i % 1000``: 999s by key, then 998s..."""
    out: list[str] = []
    for value in range(999, -1, -1):
        out += [f"u{i:06}" for i in range(1, BIG + 1) if i % 1000 == value]
        if len(out) >= count:
            return out[:count]
    return out


async def plan_of(store_url: str, dialect: str, sql: str, params: tuple[Any, ...]) -> str:
    """The query plan: SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN."""
    if dialect == "sqlite":
        path, _ = sqlite_path(store_url)
        lite = sqlite3.connect(path, isolation_level=None)
        try:
            rows = lite.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        finally:
            lite.close()
        return "\n".join(str(row[-1]) for row in rows)
    dsn, schema = split_schema(store_url)
    pg = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        rows = await pg.fetch(f"EXPLAIN {sql}", *params)
    finally:
        await pg.close()
    return "\n".join(str(row[0]) for row in rows)


async def test_a_big_scope_is_answered_from_the_index(
        store: Store, store_url: str, dialect: str, session: SessionFactory) -> None:
    await fill_big_scope(store_url, dialect)
    run = session()
    top = await run.call("top", [{"scope": "big"}])
    assert keys_of(top) == expected_top(10)
    assert all(record["value"] == 999 for record in top)
    nexts = await run.call("top", [{"scope": "big", "after": "u099999", "limit": 100}])
    assert keys_of(nexts) == expected_top(200)[100:]
    assert await run.call("rank", ["u000999", {"scope": "big"}]) == 1
    assert await run.call("rank", ["u099999", {"scope": "big"}]) == 100
    assert await run.call("rank", ["u100000", {"scope": "big"}]) == BIG  # value 0, last key
    assert await run.call("rank", ["textu000001", {"scope": "big"}]) is None

    # The statements the stores run, with the parameters of a page after u000005 (value 5).
    if dialect == "sqlite":
        from moonshard.store import sqlite as lite

        place = ("guild", "4242", "big", 1.0)
        queries = {"top": (lite._KV_TOP, (*place, 10)),
                   "tied": (lite._KV_TOP_TIED, (*place, 5.0, "u000005", 10)),
                   "below": (lite._KV_TOP_BELOW, (*place, 5.0, 10)),
                   "ahead": (lite._KV_AHEAD, ("guild", "4242", "big", 5.0, "u000005", 1.0))}
    else:
        from moonshard.store import postgres as pg

        place = ("guild", "4242", "big", 1.0)
        queries = {"top": (pg._KV_TOP, (*place, 10)),
                   "after": (pg._KV_TOP_AFTER, (*place, 5.0, "u000005", 10)),
                   "ahead": (pg._KV_AHEAD, ("guild", "4242", "big", 5.0, "u000005", 1.0))}
    for name, (sql, params) in queries.items():
        plan = await plan_of(store_url, dialect, sql, params)
        assert "kv_top" in plan, (name, plan)
        if dialect == "sqlite":
            # Ranges of the index in its own order: no sorting step, no scan of the table.
            assert "TEMP B-TREE" not in plan, (name, plan)
            assert "PRIMARY KEY" not in plan, (name, plan)
            assert "SCAN kv" not in plan, (name, plan)
        else:
            assert "Seq Scan" not in plan, (name, plan)
            # Read in the index's order: a sort step only ever sorts what a LIMIT already
            # cut (the page's branches), never the scope.
            lines = plan.splitlines()
            for number, line in enumerate(lines):
                if "Sort  (" in line:
                    assert "Limit" in lines[number + 2], (name, plan)


# -- migration 4 fills num_value -----------------------------------------------------------------
async def open_at_version_3(store_url: str, dialect: str) -> None:
    """A database as moonshard left it before migration 4."""
    steps = [(migration.version, migration.description,
              migration.sqlite if dialect == "sqlite" else migration.postgres)
             for migration in MIGRATIONS if migration.version <= 3]
    if dialect == "sqlite":
        path, _ = sqlite_path(store_url)
        path.parent.mkdir(parents=True, exist_ok=True)
        lite = sqlite3.connect(path, isolation_level=None)
        try:
            lite.execute("CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY,"
                         " description TEXT NOT NULL, applied_at REAL NOT NULL)")
            for version, description, sql in steps:
                for step in sql:
                    lite.execute(step)
                lite.execute("INSERT INTO schema_version VALUES (?, ?, 0)",
                             (version, description))
        finally:
            lite.close()
        return
    dsn, schema = split_schema(store_url)
    setup = await asyncpg.connect(dsn)
    await setup.execute(f'CREATE SCHEMA "{schema}"')
    await setup.close()
    pg = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        await pg.execute("CREATE TABLE schema_version (version integer NOT NULL PRIMARY KEY,"
                         " description text NOT NULL, applied_at double precision NOT NULL)")
        for version, description, sql in steps:
            for step in sql:
                await pg.execute(step)
            await pg.execute("INSERT INTO schema_version VALUES ($1, $2, 0)",
                             version, description)
    finally:
        await pg.close()


OLD_VALUES = {"int": "42", "neg": "-7", "float": "0.1", "exp": "1e+20", "small": "-1.5e-07",
              "big": "9223372036854775807", "text": '"12"', "bool": "true", "list": "[1]",
              "null": "null", "long": "1" + "0" * 320}


async def test_migration_4_fills_the_numbers_of_existing_rows(
        store_url: str, dialect: str) -> None:
    await open_at_version_3(store_url, dialect)
    for key, value in OLD_VALUES.items():
        escaped = value.replace("'", "''")
        resume = "0" if dialect == "sqlite" else "false"
        await raw_fetch(store_url, (
            "INSERT INTO kv (tenant_kind, tenant_id, scope, key, value, version, created_at,"
            f" updated_at, expires_at, resume) VALUES ('guild', '4242', 'old', '{key}',"
            f" '{escaped}', 1, 0, 0, NULL, {resume})"))
    await raw_fetch(store_url, (
        "INSERT INTO templates (tenant_kind, tenant_id, name, files, events, paused, version,"
        " updated_at) VALUES ('guild', '4242', 'old', '{\"init.lua\": \"return {}\"}', '[]', "
        f"{'0' if dialect == 'sqlite' else 'false'}, 3, 5)"))
    store = await open_store(store_url)
    try:
        rows = {row[0]: row[1] for row in await raw_fetch(store_url,
                                                          "SELECT key, num_value FROM kv")}
        for key, value in OLD_VALUES.items():
            assert rows[key] == kvlogic.rank_number_text(value), key
            assert rows[key] == kvlogic.rank_number(json.loads(value)), key
        top = await store.kv.top(TenantId.guild(4242), "old", after=None, limit=10, now=1)
        assert [record.key for record in top] == ["exp", "big", "int", "float", "small", "neg"]
        # A write after the migration keeps the same number as the migration gave.
        await store.kv.apply(TenantId.guild(4242), [KVSet("old", "int2", 42)], now=1)
        rank = await store.kv.ahead(TenantId.guild(4242), "old", (42.0, "int2"), now=1)
        assert rank == 3
        history = await store.templates.history(TenantId.guild(4242), "old")
        assert [(item.version, item.updated_at) for item in history] == [(3, 5.0)]
    finally:
        await store.close()
