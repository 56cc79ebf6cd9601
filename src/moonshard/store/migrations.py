"""Versioned schema migrations for both stores, applied when a store opens.

Each version is a list of SQL steps per dialect. Opening runs the missing versions in one
transaction under a lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock per
schema), records each in ``schema_version``, and refuses a database newer than this code.
Re-running is a no-op. A new version is appended to ``MIGRATIONS``; old ones never change.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from typing import TYPE_CHECKING

from moonshard.errors import SchemaError
from moonshard.store.kvlogic import rank_number_text

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "migrate_postgres", "migrate_sqlite"]


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_SQLITE_V1 = (
    # WITHOUT ROWID: every table is looked up by its primary key, which then holds the row.
    """CREATE TABLE kv (
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL,
        resume INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_kind, tenant_id, scope, key)
    ) WITHOUT ROWID""",
    # In timer order (see TimerStore.expiries_after), so a page is one index range scan.
    """CREATE INDEX kv_expires_at ON kv (expires_at, tenant_kind, tenant_id, scope, key)
        WHERE expires_at IS NOT NULL""",
    "CREATE INDEX kv_resume ON kv (tenant_kind, tenant_id) WHERE resume = 1",
    # Rows per tenant (expired ones included), kept by the store's writes: an upper bound on
    # live keys that makes the keys-per-tenant limit cheap until a tenant comes near it.
    """CREATE TABLE kv_counts (
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        row_count INTEGER NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE template_sets (
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE templates (
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        files TEXT NOT NULL,
        events TEXT NOT NULL,
        paused INTEGER NOT NULL,
        version INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE tenant_state (
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        flags TEXT NOT NULL DEFAULT '{}',
        limit_overrides TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE api_tokens (
        token_hash TEXT NOT NULL PRIMARY KEY,
        tenant_kind TEXT,
        tenant_id TEXT,
        created_at REAL NOT NULL,
        CHECK ((tenant_kind IS NULL) = (tenant_id IS NULL))
    ) WITHOUT ROWID""",
    # AUTOINCREMENT: ids are never reused, so a stale id held by a timer cannot hit a new event.
    """CREATE TABLE scheduled_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        key TEXT,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        due_at REAL NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    )""",
    """CREATE UNIQUE INDEX scheduled_events_key
        ON scheduled_events (tenant_kind, tenant_id, key) WHERE key IS NOT NULL""",
    "CREATE INDEX scheduled_events_due ON scheduled_events (due_at, id)",
    "CREATE INDEX scheduled_events_tenant ON scheduled_events (tenant_kind, tenant_id)",
)

# Text that is sorted or paged on uses the "C" collation: by code point, as in SQLite and in
# Python, whatever the database's locale.
_POSTGRES_V1 = (
    """CREATE TABLE kv (
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        scope text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value text NOT NULL,
        version bigint NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        expires_at double precision,
        resume boolean NOT NULL DEFAULT false,
        PRIMARY KEY (tenant_kind, tenant_id, scope, key)
    )""",
    """CREATE INDEX kv_expires_at ON kv (expires_at, tenant_kind, tenant_id, scope, key)
        WHERE expires_at IS NOT NULL""",
    "CREATE INDEX kv_resume ON kv (tenant_kind, tenant_id) WHERE resume",
    """CREATE TABLE kv_counts (
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        row_count bigint NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id)
    )""",
    """CREATE TABLE template_sets (
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        updated_at double precision NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id)
    )""",
    """CREATE TABLE templates (
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        files text NOT NULL,
        events text NOT NULL,
        paused boolean NOT NULL,
        version bigint NOT NULL,
        updated_at double precision NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id, name)
    )""",
    """CREATE TABLE tenant_state (
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        flags text NOT NULL DEFAULT '{}',
        limit_overrides text NOT NULL DEFAULT '{}',
        updated_at double precision NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id)
    )""",
    """CREATE TABLE api_tokens (
        token_hash text NOT NULL PRIMARY KEY,
        tenant_kind text COLLATE "C",
        tenant_id text COLLATE "C",
        created_at double precision NOT NULL,
        CHECK ((tenant_kind IS NULL) = (tenant_id IS NULL))
    )""",
    """CREATE TABLE scheduled_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        key text COLLATE "C",
        name text NOT NULL,
        data text NOT NULL,
        due_at double precision NOT NULL,
        attempt integer NOT NULL DEFAULT 0,
        created_at double precision NOT NULL
    )""",
    """CREATE UNIQUE INDEX scheduled_events_key
        ON scheduled_events (tenant_kind, tenant_id, key) WHERE key IS NOT NULL""",
    "CREATE INDEX scheduled_events_due ON scheduled_events (due_at, id)",
    "CREATE INDEX scheduled_events_tenant ON scheduled_events (tenant_kind, tenant_id)",
)

# Version 2: tokens get an id (what an operator lists and revokes), a label and a last-use
# time; there is one admin token (the newest of several is kept: the ones before were meant
# to be replaced); tenants' log lines are stored.
_TOKENS_V2_DEDUP = (
    "DELETE FROM api_tokens WHERE tenant_kind IS NULL AND token_hash <> ("
    "SELECT token_hash FROM api_tokens WHERE tenant_kind IS NULL"
    " ORDER BY created_at DESC, token_hash LIMIT 1)")
_SQLITE_V2 = (
    "ALTER TABLE api_tokens ADD COLUMN id TEXT",
    "ALTER TABLE api_tokens ADD COLUMN label TEXT",
    "ALTER TABLE api_tokens ADD COLUMN last_used_at REAL",
    # Existing tokens: an id from their hash (the hash of a 256-bit secret reveals nothing).
    "UPDATE api_tokens SET id = 'tok_' || substr(token_hash, 1, 16)",
    _TOKENS_V2_DEDUP,
    "CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id)",
    "CREATE UNIQUE INDEX api_tokens_admin ON api_tokens ((tenant_kind IS NULL))"
    " WHERE tenant_kind IS NULL",
    """CREATE TABLE tenant_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        ts REAL NOT NULL,
        level TEXT NOT NULL,
        template TEXT NOT NULL,
        message TEXT NOT NULL
    )""",
    "CREATE INDEX tenant_logs_tenant ON tenant_logs (tenant_kind, tenant_id, id)",
    "CREATE INDEX tenant_logs_ts ON tenant_logs (ts)",
)
_POSTGRES_V2 = (
    'ALTER TABLE api_tokens ADD COLUMN id text COLLATE "C"',
    "ALTER TABLE api_tokens ADD COLUMN label text",
    "ALTER TABLE api_tokens ADD COLUMN last_used_at double precision",
    "UPDATE api_tokens SET id = 'tok_' || substr(token_hash, 1, 16)",
    _TOKENS_V2_DEDUP,
    "CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id)",
    "CREATE UNIQUE INDEX api_tokens_admin ON api_tokens ((tenant_kind IS NULL))"
    " WHERE tenant_kind IS NULL",
    """CREATE TABLE tenant_logs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        ts double precision NOT NULL,
        level text NOT NULL,
        template text NOT NULL,
        message text NOT NULL
    )""",
    "CREATE INDEX tenant_logs_tenant ON tenant_logs (tenant_kind, tenant_id, id)",
    "CREATE INDEX tenant_logs_ts ON tenant_logs (ts)",
)
# Version 3: the outbox of emitted events, written in the transaction of the run that
# emitted them and deleted once they are delivered, so a crash between the two loses none.
_SQLITE_V3 = (
    """CREATE TABLE event_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        author TEXT,
        event_id TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
)
_POSTGRES_V3 = (
    """CREATE TABLE event_outbox (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        name text NOT NULL,
        data text NOT NULL,
        author text,
        event_id text NOT NULL,
        created_at double precision NOT NULL
    )""",
)

# Version 4: leaderboards and template versions. ``num_value`` is the value as a number when it
# is one (NULL otherwise), kept by every write, so ``top`` and ``rank`` read one index in
# (number descending, key) order; existing rows are filled here. SQLite computes it with the
# store's own Python rule (``kvlogic.rank_number_text``, registered by ``migrate_sqlite``) so a
# migrated row and a newly written one hold the same double; PostgreSQL's text-to-double cast
# rounds correctly, as Python's does. ``template_versions`` keeps the last saves of each
# template (``TEMPLATE_VERSIONS_KEPT``), the current one included.
_NUMBER_START = "('-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9')"
_SQLITE_V4 = (
    "ALTER TABLE kv ADD COLUMN num_value REAL",
    "UPDATE kv SET num_value = moonshard_rank_number(value)"
    f" WHERE substr(value, 1, 1) IN {_NUMBER_START}",
    # expires_at at the end: rank's counts (liveness included) read the index alone.
    """CREATE INDEX kv_top ON kv (tenant_kind, tenant_id, scope, num_value DESC, key, expires_at)
        WHERE num_value IS NOT NULL""",
    """CREATE TABLE template_versions (
        tenant_kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        files TEXT NOT NULL,
        events TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id, name, version)
    ) WITHOUT ROWID""",
    "INSERT INTO template_versions (tenant_kind, tenant_id, name, version, files, events,"
    " updated_at) SELECT tenant_kind, tenant_id, name, version, files, events, updated_at"
    " FROM templates",
)
_POSTGRES_V4 = (
    "ALTER TABLE kv ADD COLUMN num_value double precision",
    # A JSON value that starts with a digit or '-' is a number; longer than 300 characters it
    # is an integer too big for a double (the same rule as kvlogic.rank_number_text).
    "UPDATE kv SET num_value = value::double precision"
    f" WHERE left(value, 1) IN {_NUMBER_START} AND length(value) <= 300",
    """CREATE INDEX kv_top ON kv (tenant_kind, tenant_id, scope, num_value DESC, key)
        INCLUDE (expires_at) WHERE num_value IS NOT NULL""",
    """CREATE TABLE template_versions (
        tenant_kind text COLLATE "C" NOT NULL,
        tenant_id text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        files text NOT NULL,
        events text NOT NULL,
        updated_at double precision NOT NULL,
        PRIMARY KEY (tenant_kind, tenant_id, name, version)
    )""",
    "INSERT INTO template_versions (tenant_kind, tenant_id, name, version, files, events,"
    " updated_at) SELECT tenant_kind, tenant_id, name, version, files, events, updated_at"
    " FROM templates",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "key-value store, templates, tenant state, tokens, scheduled events",
              _SQLITE_V1, _POSTGRES_V1),
    Migration(2, "token ids, labels and last use; one admin token; tenant logs",
              _SQLITE_V2, _POSTGRES_V2),
    Migration(3, "outbox of emitted events", _SQLITE_V3, _POSTGRES_V3),
    Migration(4, "leaderboard index (num_value); template versions", _SQLITE_V4,
              _POSTGRES_V4),
)
LATEST_VERSION = MIGRATIONS[-1].version

_SQLITE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at REAL NOT NULL
)"""
_POSTGRES_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version integer NOT NULL PRIMARY KEY,
    description text NOT NULL,
    applied_at double precision NOT NULL
)"""
_CURRENT = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
_SQLITE_RECORD = "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)"
_POSTGRES_RECORD = (
    "INSERT INTO schema_version (version, description, applied_at) VALUES ($1, $2, $3)")
# First key of PostgreSQL's two-key advisory lock: "moon" in ASCII, so moonshard's lock does
# not collide with another application's; the second key is the schema.
_LOCK_CLASS = 0x6D6F6F6E


def _pending(current: int) -> tuple[Migration, ...]:
    if current > LATEST_VERSION:
        raise SchemaError(
            f"database schema is version {current} but this moonshard knows up to "
            f"{LATEST_VERSION}; upgrade moonshard")
    return tuple(migration for migration in MIGRATIONS if migration.version > current)


def migrate_sqlite(conn: sqlite3.Connection) -> int:
    """Brings an SQLite database (autocommit connection) up to date; returns its version."""
    try:
        # Fast path without the write lock: many processes open an up-to-date file at once.
        current = int(conn.execute(_CURRENT).fetchone()[0])
    except sqlite3.OperationalError:
        current = 0
    if not _pending(current):
        return current
    # Migration 4 fills kv.num_value with the same rule the store's writes use.
    conn.create_function("moonshard_rank_number", 1, rank_number_text, deterministic=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_SQLITE_VERSION_TABLE)
        current = int(conn.execute(_CURRENT).fetchone()[0])
        for migration in _pending(current):
            for step in migration.sqlite:
                conn.execute(step)
            conn.execute(_SQLITE_RECORD, (migration.version, migration.description, time.time()))
            current = migration.version
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return current


async def migrate_postgres(
    conn: asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record],
) -> int:
    """Brings a PostgreSQL schema (the connection's search_path) up to date; returns its version."""
    async with conn.transaction():
        # Two processes opening one database at once: the second waits here, then finds
        # nothing left to do. The lock ends with the transaction.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", _LOCK_CLASS)
        await conn.execute(_POSTGRES_VERSION_TABLE)
        current = int(await conn.fetchval(_CURRENT))
        for migration in _pending(current):
            for step in migration.postgres:
                await conn.execute(step)
            await conn.execute(
                _POSTGRES_RECORD, migration.version, migration.description, time.time())
            current = migration.version
    return current
