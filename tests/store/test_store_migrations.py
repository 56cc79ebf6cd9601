"""Versioned migrations: from empty, idempotent, and refusing a newer database."""

from __future__ import annotations

import re

import pytest
from store_support import raw_fetch, table_names

from moonshard.errors import SchemaError
from moonshard.store import open_store
from moonshard.store.migrations import LATEST_VERSION, MIGRATIONS

TABLES = {"schema_version", "kv", "kv_counts", "templates", "template_sets", "tenant_state",
          "api_tokens", "scheduled_events", "event_outbox"}


async def test_migrations_from_empty(store_url: str) -> None:
    store = await open_store(store_url)
    await store.close()
    assert await table_names(store_url) >= TABLES
    rows = await raw_fetch(store_url, "SELECT version FROM schema_version ORDER BY version")
    assert [row[0] for row in rows] == [migration.version for migration in MIGRATIONS]
    assert rows[-1][0] == LATEST_VERSION


async def test_reopening_migrates_nothing(store_url: str) -> None:
    store = await open_store(store_url)
    await store.close()
    before = await raw_fetch(store_url, "SELECT * FROM schema_version ORDER BY version")
    for _ in range(2):
        store = await open_store(store_url)
        await store.close()
    assert await raw_fetch(store_url, "SELECT * FROM schema_version ORDER BY version") == before


async def test_the_migration_runner_is_idempotent(store_url: str, dialect: str) -> None:
    """Run the runner itself again on an up-to-date database: a no-op."""
    store = await open_store(store_url)
    await store.close()
    if dialect == "sqlite":
        import sqlite3

        from moonshard.store import sqlite_path
        from moonshard.store.migrations import migrate_sqlite

        lite = sqlite3.connect(sqlite_path(store_url)[0], isolation_level=None)
        try:
            assert migrate_sqlite(lite) == LATEST_VERSION
            assert migrate_sqlite(lite) == LATEST_VERSION
        finally:
            lite.close()
    else:
        import asyncpg

        from moonshard.store.migrations import migrate_postgres
        from moonshard.store.postgres import split_schema

        dsn, schema = split_schema(store_url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
        try:
            assert await migrate_postgres(conn) == LATEST_VERSION
            assert await migrate_postgres(conn) == LATEST_VERSION
        finally:
            await conn.close()
    rows = await raw_fetch(store_url, "SELECT version FROM schema_version")
    assert len(rows) == len(MIGRATIONS)


async def test_a_newer_database_is_refused(store_url: str) -> None:
    store = await open_store(store_url)
    await store.close()
    await raw_fetch(store_url, "UPDATE schema_version SET version = 99 "
                               f"WHERE version = {LATEST_VERSION}")
    message = (f"database schema is version 99 but this moonshard knows up to "
               f"{LATEST_VERSION}; upgrade moonshard")
    with pytest.raises(SchemaError, match=re.escape(message)):
        await open_store(store_url)
