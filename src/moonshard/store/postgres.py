"""The PostgreSQL store: the same schema and rules as SQLite, on an asyncpg pool.

Transactions run at READ COMMITTED. A key-value write locks the rows it touches
(``SELECT ... FOR UPDATE``, in key order, so two runs never deadlock on each other's keys) and
applies its writes to them as they stand at that moment: an ``incr`` adds to the latest
committed value, never to a value read earlier. Two transactions creating the same key at once
collide on the primary key; the loser is retried from the start and then sees the winner's row.
"""

from __future__ import annotations

import contextlib
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from moonshard.store import kvlogic
from moonshard.store._common import (
    check_admin,
    check_emits,
    check_label,
    check_pending,
    check_template_count,
    new_token,
    new_token_id,
    outbox_event,
    scheduled_event,
    template_from_row,
    template_version,
    token_info,
)
from moonshard.store.api import (
    ADMIN_LABEL,
    TEMPLATE_VERSIONS_KEPT,
    TOKEN_USE_RESOLUTION,
    ExpiryCursor,
    KVExpire,
    KVIncr,
    KVRecord,
    KVResult,
    KVStore,
    KVWrite,
    OutboxEvent,
    RunCancel,
    RunCommit,
    RunEffects,
    RunLimits,
    RunStore,
    ScheduledCursor,
    ScheduledEvent,
    Shard,
    Store,
    TemplateStore,
    TemplateVersion,
    TimerStore,
    TokenInfo,
    TokenStore,
    TopPlace,
    VersionedKey,
    hash_token,
)
from moonshard.store.migrations import migrate_postgres
from moonshard.store.postgres_logs import PostgresTenantLogStore
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId
from moonshard.values import JsonValue, dumps_json, loads_json

__all__ = ["PostgresStore", "split_schema"]

_T = TypeVar("_T")
_Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Conflicts that abort a transaction which succeeds when simply run again.
_RETRYABLE = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError,
              asyncpg.SerializationError)
_ATTEMPTS = 8

# -- key-value ---------------------------------------------------------------------------------
_TENANT = "tenant_kind = $1 AND tenant_id = $2"
_KEY = f"{_TENANT} AND scope = $3 AND key = $4"
_FIELDS = "value, version, created_at, updated_at, expires_at, resume"
_KV_GET = f"SELECT {_FIELDS} FROM kv WHERE {_KEY} AND (expires_at IS NULL OR expires_at > $5)"
# One statement, so one snapshot: the key's row (even expired) and the tenant's row count.
_KV_LOAD_ROW = (
    "SELECT k.value, k.version, k.created_at, k.updated_at, k.expires_at, k.resume, c.row_count"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN kv AS k ON k.tenant_kind = $1 AND k.tenant_id = $2 AND k.scope = $3"
    " AND k.key = $4"
    " LEFT JOIN kv_counts AS c ON c.tenant_kind = $1 AND c.tenant_id = $2")
_KV_ROWS_OF = (
    f"SELECT scope, key, {_FIELDS} FROM kv WHERE {_TENANT}"
    " AND (scope, key) IN (SELECT * FROM unnest($3::text[], $4::text[]))")
_KV_LOCK = f"{_KV_ROWS_OF} ORDER BY scope, key FOR UPDATE"
_KV_FIND = (
    f"SELECT key, {_FIELDS} FROM kv WHERE {_TENANT} AND scope = $3"
    " AND (expires_at IS NULL OR expires_at > $4)")
_KV_COUNT_SCOPE = (
    f"SELECT COUNT(*) FROM kv WHERE {_TENANT} AND scope = $3"
    " AND (expires_at IS NULL OR expires_at > $4)")
_KV_COUNT_ALL = (
    f"SELECT COUNT(*) FROM kv WHERE {_TENANT} AND (expires_at IS NULL OR expires_at > $3)")
_KV_INSERT = (
    "INSERT INTO kv (tenant_kind, tenant_id, scope, key, value, version, created_at, updated_at,"
    " expires_at, resume, num_value) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
_KV_UPDATE = (
    "UPDATE kv SET value = $5, version = $6, created_at = $7, updated_at = $8, expires_at = $9,"
    f" resume = $10, num_value = $11 WHERE {_KEY}")
# Leaderboards: one range of the kv_top index each (see KVStore.top).
_KV_TOP_WHERE = (
    f"FROM kv WHERE {_TENANT} AND scope = $3 AND num_value IS NOT NULL"
    " AND (expires_at IS NULL OR expires_at > $4)")
_KV_TOP = f"SELECT key, {_FIELDS} {_KV_TOP_WHERE} ORDER BY num_value DESC, key LIMIT $5"
# After (n, k): the rest of n's ties (keys above k), then the numbers below n; two index
# ranges, where one OR of both would scan from the top. Rows: key, num_value, fields.
_KV_TOP_PAGE_ROWS = f"SELECT key, num_value, {_FIELDS} {_KV_TOP_WHERE}"
_KV_TOP_AFTER = (
    f"(({_KV_TOP_PAGE_ROWS} AND num_value = $5 AND key > $6 ORDER BY key LIMIT $7)"
    f" UNION ALL ({_KV_TOP_PAGE_ROWS} AND num_value < $5"
    " ORDER BY num_value DESC, key LIMIT $7)) ORDER BY num_value DESC, key LIMIT $7")
_KV_AHEAD = (
    f"SELECT (SELECT COUNT(*) FROM kv WHERE {_TENANT} AND scope = $3 AND num_value > $4"
    " AND (expires_at IS NULL OR expires_at > $6))"
    f" + (SELECT COUNT(*) FROM kv WHERE {_TENANT} AND scope = $3 AND num_value = $4"
    " AND key < $5 AND (expires_at IS NULL OR expires_at > $6))")
_KV_DELETE = f"DELETE FROM kv WHERE {_KEY}"
_KV_DELETE_VERSION = f"DELETE FROM kv WHERE {_KEY} AND version = $5"
_KV_DELETE_VERSION_AT = f"{_KV_DELETE_VERSION} AND expires_at = $6"
# One statement for a batch of timers: each (scope, key, version[, expires_at]) of the arrays,
# numbered, so the caller learns which of its keys were deleted.
_KV_DELETE_VERSIONS = (
    "DELETE FROM kv USING unnest($3::text[], $4::text[], $5::bigint[], $6::float8[])"
    " WITH ORDINALITY AS d(scope, key, version, expires_at, n)"
    " WHERE kv.tenant_kind = $1 AND kv.tenant_id = $2 AND kv.scope = d.scope"
    " AND kv.key = d.key AND kv.version = d.version"
    " AND (d.expires_at IS NULL OR kv.expires_at = d.expires_at) RETURNING d.n")
_KV_ROWS = f"SELECT row_count FROM kv_counts WHERE {_TENANT}"
_KV_ROWS_ADD = (
    "INSERT INTO kv_counts (tenant_kind, tenant_id, row_count) VALUES ($1, $2, $3)"
    " ON CONFLICT (tenant_kind, tenant_id)"
    " DO UPDATE SET row_count = kv_counts.row_count + EXCLUDED.row_count")
_KV_TIMER_FIELDS = f"tenant_kind, tenant_id, scope, key, {_FIELDS}"
_KV_DUE = (
    f"SELECT {_KV_TIMER_FIELDS} FROM kv WHERE expires_at IS NOT NULL AND expires_at <= $1"
    " ORDER BY expires_at LIMIT $2")
_KV_AFTER = (
    f"SELECT {_KV_TIMER_FIELDS} FROM kv WHERE expires_at IS NOT NULL AND expires_at <= $1"
    " AND (expires_at, tenant_kind, tenant_id, scope, key) > ($2, $3, $4, $5, $6)"
    " ORDER BY expires_at, tenant_kind, tenant_id, scope, key LIMIT $7")
# A worker's tenants: Discord's shard formula on the snowflake (TenantId keeps them < 2**63).
_KV_AFTER_SHARD = _KV_AFTER.replace(
    " ORDER BY", " AND ((tenant_id::bigint >> 22) % $8) = $9 ORDER BY")
_RESUME_TENANTS = (
    "SELECT DISTINCT tenant_kind, tenant_id FROM kv WHERE resume"
    " AND (expires_at IS NULL OR expires_at > $1) AND ((tenant_id::bigint >> 22) % $2) = $3"
    " ORDER BY tenant_kind, tenant_id")
_KV_RESUME = (
    f"SELECT scope, key, {_FIELDS} FROM kv WHERE {_TENANT} AND resume"
    " AND (expires_at IS NULL OR expires_at > $3) ORDER BY scope, key")

# -- templates ---------------------------------------------------------------------------------
_SET_VERSION = f"SELECT version FROM template_sets WHERE {_TENANT}"
_SET_BUMP = (
    "INSERT INTO template_sets (tenant_kind, tenant_id, version, updated_at)"
    " VALUES ($1, $2, 1, $3) ON CONFLICT (tenant_kind, tenant_id) DO UPDATE"
    " SET version = template_sets.version + 1, updated_at = EXCLUDED.updated_at"
    " RETURNING version")
_TEMPLATES = (
    "SELECT name, files, events, paused, version, updated_at FROM templates"
    f" WHERE {_TENANT} ORDER BY name")
_TEMPLATE_EXISTS = f"SELECT 1 FROM templates WHERE {_TENANT} AND name = $3"
_TEMPLATE_COUNT = f"SELECT COUNT(*) FROM templates WHERE {_TENANT}"
_TEMPLATE_PUT = (
    "INSERT INTO templates (tenant_kind, tenant_id, name, files, events, paused, version,"
    " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (tenant_kind, tenant_id, name) DO UPDATE SET files = EXCLUDED.files,"
    " events = EXCLUDED.events, paused = EXCLUDED.paused, version = EXCLUDED.version,"
    " updated_at = EXCLUDED.updated_at")
_TEMPLATE_DELETE = f"DELETE FROM templates WHERE {_TENANT} AND name = $3"
_SET_TENANTS = (
    "SELECT tenant_kind, tenant_id FROM template_sets WHERE version > 0"
    " AND (tenant_kind, tenant_id) > ($1, $2) ORDER BY tenant_kind, tenant_id LIMIT $3")
_VERSION_PUT = (
    "INSERT INTO template_versions (tenant_kind, tenant_id, name, version, files, events,"
    " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
# Everything at or below the oldest version that no longer fits (none while fewer are kept).
_VERSION_PRUNE = (
    f"DELETE FROM template_versions WHERE {_TENANT} AND name = $3 AND version <= ("
    f"SELECT version FROM template_versions WHERE {_TENANT} AND name = $3"
    " ORDER BY version DESC LIMIT 1 OFFSET $4)")
_VERSIONS = (
    f"SELECT version, events, updated_at FROM template_versions WHERE {_TENANT}"
    " AND name = $3 ORDER BY version DESC")
_VERSION_GET = (
    f"SELECT files, events, updated_at FROM template_versions WHERE {_TENANT}"
    " AND name = $3 AND version = $4")
_VERSIONS_DELETE = f"DELETE FROM template_versions WHERE {_TENANT} AND name = $3"
# Serialises writers of one tenant's set: the version row is locked (or created) first.
_SET_LOCK = (
    "INSERT INTO template_sets (tenant_kind, tenant_id, version, updated_at)"
    " VALUES ($1, $2, 0, $3) ON CONFLICT (tenant_kind, tenant_id) DO UPDATE"
    " SET version = template_sets.version RETURNING version")

# -- tokens ------------------------------------------------------------------------------------
_TOKEN_FIELDS = "tenant_kind, tenant_id, created_at, id, label, last_used_at"
_TOKEN_INSERT = (
    "INSERT INTO api_tokens (token_hash, tenant_kind, tenant_id, created_at, id, label)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (token_hash) DO NOTHING")
_TOKEN_GET = f"SELECT {_TOKEN_FIELDS} FROM api_tokens WHERE token_hash = $1"
_TOKEN_TOUCH = "UPDATE api_tokens SET last_used_at = $1 WHERE token_hash = $2"
_TOKEN_DELETE = "DELETE FROM api_tokens WHERE token_hash = $1"
_TOKEN_DELETE_OTHER_ADMINS = (
    "DELETE FROM api_tokens WHERE tenant_kind IS NULL AND token_hash <> $1")
_TOKEN_LIST = (
    f"SELECT {_TOKEN_FIELDS} FROM api_tokens"
    " ORDER BY tenant_kind IS NOT NULL, created_at, id")
_TOKEN_DELETE_ID = f"DELETE FROM api_tokens WHERE id = $1 RETURNING {_TOKEN_FIELDS}"
_TOKEN_BY_ID = f"SELECT {_TOKEN_FIELDS} FROM api_tokens WHERE id = $1 FOR UPDATE"
# Serialises admin token changes (two servers starting on one database at once).
_TOKEN_ADMIN_LOCK = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':admin-token'))"

# -- scheduled events --------------------------------------------------------------------------
_EVENT_FIELDS = "id, tenant_kind, tenant_id, key, name, data, due_at, attempt, created_at"
_EVENT_INSERT = (
    "INSERT INTO scheduled_events (tenant_kind, tenant_id, key, name, data, due_at, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id")
_EVENT_CANCEL = f"DELETE FROM scheduled_events WHERE {_TENANT} AND key = $3"
_EVENT_COUNT = f"SELECT COUNT(*) FROM scheduled_events WHERE {_TENANT}"
_EVENT_DUE = (
    f"SELECT {_EVENT_FIELDS} FROM scheduled_events WHERE due_at <= $1"
    " ORDER BY due_at, id LIMIT $2")
_EVENT_AFTER = (
    f"SELECT {_EVENT_FIELDS} FROM scheduled_events WHERE due_at <= $1"
    " AND (due_at, id) > ($2, $3) ORDER BY due_at, id LIMIT $4")
_EVENT_HAS = f"SELECT 1 FROM scheduled_events WHERE {_TENANT} AND key = $3"
_EVENT_GET = f"SELECT {_EVENT_FIELDS} FROM scheduled_events WHERE id = $1"
_EVENT_AFTER_SHARD = _EVENT_AFTER.replace(
    " ORDER BY", " AND ((tenant_id::bigint >> 22) % $5) = $6 ORDER BY")
_EVENT_REMOVE = "DELETE FROM scheduled_events WHERE id = $1"
_EVENT_RETRY = "UPDATE scheduled_events SET due_at = $2, attempt = attempt + 1 WHERE id = $1"
_KEYS_LOCK = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
_KEYS_LOCK_CLASS = 0x6D6F6F6B
# Serialises the scheduling runs of one tenant, so the pending count checked is the one
# committed (READ COMMITTED alone would let two runs each see room for one more).
_EVENT_LOCK = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
_EVENT_LOCK_CLASS = 0x6D6F6F65

# -- the outbox --------------------------------------------------------------------------------
_OUTBOX_FIELDS = "id, tenant_kind, tenant_id, name, data, author, event_id, created_at"
_OUTBOX_INSERT = (
    "INSERT INTO event_outbox (tenant_kind, tenant_id, name, data, author, event_id, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id")
_OUTBOX_SHARD = (
    f"SELECT {_OUTBOX_FIELDS} FROM event_outbox WHERE id > $1"
    " AND ((tenant_id::bigint >> 22) % $2) = $3 ORDER BY id LIMIT $4")
_OUTBOX_DELETE = "DELETE FROM event_outbox WHERE id = $1"


def split_schema(database_url: str) -> tuple[str, str | None]:
    """``database_url`` without its ``schema`` query parameter, and that schema."""
    parsed = urllib.parse.urlsplit(database_url)
    query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    rest = urllib.parse.urlencode([(name, value) for name, value in query if name != "schema"])
    schema = schemas[-1] if schemas else None
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"bad PostgreSQL schema {schema!r}: use letters, digits and _, at most 63")
    return urllib.parse.urlunsplit(parsed._replace(query=rest)), schema


class PostgresStore(Store):
    """The PostgreSQL store. Open with ``await PostgresStore.open(dsn, schema=...)``."""

    __slots__ = ("_pool", "kv", "logs", "runs", "schema", "templates", "timers", "tokens")

    def __init__(self, pool: asyncpg.Pool, schema: str | None) -> None:
        self._pool = pool
        self.schema = schema
        self.kv = PostgresKVStore(pool)
        self.templates = PostgresTemplateStore(pool)
        self.tokens = PostgresTokenStore(pool)
        self.timers = PostgresTimerStore(pool)
        self.runs = PostgresRunStore(pool)
        self.logs = PostgresTenantLogStore(pool)

    @classmethod
    async def open_url(cls, database_url: str) -> PostgresStore:
        dsn, schema = split_schema(database_url)
        return await cls.open(dsn, schema=schema)

    @classmethod
    async def open(
        cls, dsn: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10,
    ) -> PostgresStore:
        """Connects, creates ``schema`` if missing, and migrates it."""
        server_settings: dict[str, str] = {}
        if schema is not None:
            await _create_schema(dsn, schema)
            server_settings["search_path"] = _quote(schema)
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, server_settings=server_settings)
        try:
            async with pool.acquire() as conn:
                await migrate_postgres(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, schema)

    async def close(self) -> None:
        await self._pool.close()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def _create_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        if not exists:
            # Another process may create it between our check and our create.
            with contextlib.suppress(asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
    finally:
        await conn.close()


def _record(
    scope: str, key: str, row: asyncpg.Record | Sequence[Any], *, decode: bool = True,
) -> KVRecord:
    value = loads_json(row[0]) if decode else None
    return KVRecord(key, scope, value, row[1], row[2], row[3], row[4], row[5])


def _timer_records(rows: Sequence[asyncpg.Record]) -> list[tuple[TenantId, KVRecord]]:
    return [(TenantId(row[0], row[1]), _record(row[2], row[3], row[4:])) for row in rows]


async def _retrying(
    pool: asyncpg.Pool, body: Callable[[_Connection], Awaitable[_T]],
) -> _T:
    """Runs ``body`` in a transaction, again from the start after a retryable conflict."""
    for attempt in range(_ATTEMPTS):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await body(conn)
        except _RETRYABLE:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class _Component:
    __slots__ = ("_pool",)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool


# -- key-value ---------------------------------------------------------------------------------
class PostgresKVStore(_Component, KVStore):
    __slots__ = ()

    async def get(self, tenant: TenantId, scope: str, key: str, *, now: float) -> KVRecord | None:
        row = await self._pool.fetchrow(_KV_GET, tenant.kind, tenant.id, scope, key, now)
        return None if row is None else _record(scope, key, row)

    async def load_rows(
        self, tenant: TenantId, keys: Sequence[tuple[str, str]],
    ) -> tuple[dict[tuple[str, str], KVRecord], int]:
        if len(keys) == 1:
            ((scope, key),) = keys
            row = await self._pool.fetchrow(_KV_LOAD_ROW, tenant.kind, tenant.id, scope, key)
            assert row is not None  # the LEFT JOINs always give one row
            found = {} if row[1] is None else {(scope, key): _record(scope, key, row)}
            return found, int(row[6] or 0)
        async with self._pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(_KV_ROWS_OF, tenant.kind, tenant.id,
                                    [scope for scope, _ in keys], [key for _, key in keys])
            stored = await conn.fetchval(_KV_ROWS, tenant.kind, tenant.id)
        return {(row[0], row[1]): _record(row[0], row[1], row[2:]) for row in rows}, int(
            stored or 0)

    async def find(
        self, tenant: TenantId, scope: str, prefix: str, *, after: str | None, limit: int,
        now: float,
    ) -> list[KVRecord]:
        sql = _KV_FIND
        params: list[object] = [tenant.kind, tenant.id, scope, now]
        if prefix:
            params.append(prefix)
            sql += f" AND key >= ${len(params)}"
            end = kvlogic.prefix_end(prefix)
            if end is not None:
                params.append(end)
                sql += f" AND key < ${len(params)}"
        if after is not None:
            params.append(after)
            sql += f" AND key > ${len(params)}"
        params.append(limit)
        sql += f" ORDER BY key LIMIT ${len(params)}"
        rows = await self._pool.fetch(sql, *params)
        return [_record(scope, row[0], row[1:]) for row in rows]

    async def count(self, tenant: TenantId, scope: str | None, *, now: float) -> int:
        if scope is None:
            value = await self._pool.fetchval(_KV_COUNT_ALL, tenant.kind, tenant.id, now)
        else:
            value = await self._pool.fetchval(
                _KV_COUNT_SCOPE, tenant.kind, tenant.id, scope, now)
        return int(value)

    async def top(
        self, tenant: TenantId, scope: str, *, after: TopPlace | None, limit: int, now: float,
    ) -> list[KVRecord]:
        if after is None:
            rows = await self._pool.fetch(_KV_TOP, tenant.kind, tenant.id, scope, now, limit)
            return [_record(scope, row[0], row[1:]) for row in rows]
        rows = await self._pool.fetch(_KV_TOP_AFTER, tenant.kind, tenant.id, scope, now,
                                      after[0], after[1], limit)
        return [_record(scope, row[0], row[2:]) for row in rows]

    async def ahead(self, tenant: TenantId, scope: str, place: TopPlace, *, now: float) -> int:
        return int(await self._pool.fetchval(
            _KV_AHEAD, tenant.kind, tenant.id, scope, place[0], place[1], now))

    async def apply(
        self, tenant: TenantId, writes: Sequence[KVWrite], *, now: float,
        max_keys: int | None = None,
    ) -> list[KVResult]:
        if not writes:
            return []
        writes = tuple(writes)

        async def body(conn: _Connection) -> list[KVResult]:
            return await _kv_apply(conn, tenant, writes, now, max_keys)

        return await _retrying(self._pool, body)


async def _kv_apply(
    conn: _Connection, tenant: TenantId, writes: tuple[KVWrite, ...], now: float,
    max_keys: int | None,
) -> list[KVResult]:
    kind, tenant_id = tenant.kind, tenant.id
    needs_value = {(w.scope, w.key) for w in writes if isinstance(w, KVIncr | KVExpire)}
    keys = kvlogic.touched_keys(writes)
    locked = await conn.fetch(
        _KV_LOCK, kind, tenant_id, [scope for scope, _ in keys], [key for _, key in keys])
    rows = {
        (row[0], row[1]): _record(row[0], row[1], row[2:],
                                  decode=(row[0], row[1]) in needs_value)
        for row in locked}
    plan = kvlogic.plan_writes(writes, rows, now)
    if max_keys is not None and plan.live_delta > 0 and kvlogic.needs_live_count(
            plan, max_keys, int(await conn.fetchval(_KV_ROWS, kind, tenant_id) or 0)):
        # Near the limit, writers of one tenant count one at a time: each sees what the
        # previous one committed, so two cannot both take the last free key.
        await conn.execute(_KEYS_LOCK, _KEYS_LOCK_CLASS, str(tenant))
        live = int(await conn.fetchval(_KV_COUNT_ALL, kind, tenant_id, now))
        kvlogic.check_key_limit(plan.live_delta, max_keys, live)
    for scope, key in plan.deletes:
        await conn.execute(_KV_DELETE, kind, tenant_id, scope, key)
    for record in plan.inserts:
        await conn.execute(_KV_INSERT, *_row_args(kind, tenant_id, record))
    for record in plan.updates:
        await conn.execute(_KV_UPDATE, *_row_args(kind, tenant_id, record))
    if plan.row_delta:
        await conn.execute(_KV_ROWS_ADD, kind, tenant_id, plan.row_delta)
    return plan.results


def _row_args(kind: str, tenant_id: str, record: KVRecord) -> tuple[object, ...]:
    return (kind, tenant_id, record.scope, record.key, kvlogic.encode_value(record.value),
            record.version, record.created_at, record.updated_at, record.expires_at,
            record.resume, kvlogic.rank_number(record.value))


# -- templates ---------------------------------------------------------------------------------
class PostgresTemplateStore(_Component, TemplateStore):
    __slots__ = ()

    async def load_set(self, tenant: TenantId) -> TemplateSet:
        async with self._pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            return await _read_set(conn, tenant)

    async def put(
        self, tenant: TenantId, template: Template, *, max_templates: int | None = None,
    ) -> TemplateSet:
        now = time.time()

        async def body(conn: _Connection) -> TemplateSet:
            await conn.fetchval(_SET_LOCK, tenant.kind, tenant.id, now)
            if max_templates is not None and await conn.fetchval(
                    _TEMPLATE_EXISTS, tenant.kind, tenant.id, template.name) is None:
                check_template_count(
                    int(await conn.fetchval(_TEMPLATE_COUNT, tenant.kind, tenant.id)),
                    max_templates)
            version = int(await conn.fetchval(_SET_BUMP, tenant.kind, tenant.id, now))
            files, events = dumps_json(dict(template.files)), dumps_json(list(template.events))
            await conn.execute(
                _TEMPLATE_PUT, tenant.kind, tenant.id, template.name, files, events,
                template.paused, version, now)
            await conn.execute(_VERSION_PUT, tenant.kind, tenant.id, template.name, version,
                               files, events, now)
            await conn.execute(_VERSION_PRUNE, tenant.kind, tenant.id, template.name,
                               TEMPLATE_VERSIONS_KEPT)
            return await _read_set(conn, tenant)

        return await _retrying(self._pool, body)

    async def delete(self, tenant: TenantId, name: str) -> TemplateSet | None:
        now = time.time()

        async def body(conn: _Connection) -> TemplateSet | None:
            await conn.fetchval(_SET_LOCK, tenant.kind, tenant.id, now)
            if await conn.execute(_TEMPLATE_DELETE, tenant.kind, tenant.id, name) == "DELETE 0":
                return None
            await conn.execute(_VERSIONS_DELETE, tenant.kind, tenant.id, name)
            await conn.fetchval(_SET_BUMP, tenant.kind, tenant.id, now)
            return await _read_set(conn, tenant)

        return await _retrying(self._pool, body)

    async def tenants(self, *, after: TenantId | None, limit: int) -> list[TenantId]:
        start = ("", "") if after is None else (after.kind, after.id)
        rows = await self._pool.fetch(_SET_TENANTS, *start, limit)
        return [TenantId(row[0], row[1]) for row in rows]

    async def history(self, tenant: TenantId, name: str) -> list[TemplateVersion]:
        rows = await self._pool.fetch(_VERSIONS, tenant.kind, tenant.id, name)
        return [template_version(tuple(row)) for row in rows]

    async def version(self, tenant: TenantId, name: str, version: int) -> Template | None:
        row = await self._pool.fetchrow(_VERSION_GET, tenant.kind, tenant.id, name, version)
        return None if row is None else template_from_row(name, row[0], row[1], False,
                                                          version, row[2])


async def _read_set(conn: _Connection, tenant: TenantId) -> TemplateSet:
    version = await conn.fetchval(_SET_VERSION, tenant.kind, tenant.id)
    rows = await conn.fetch(_TEMPLATES, tenant.kind, tenant.id)
    return TemplateSet(tenant, int(version or 0),
                       tuple(template_from_row(*tuple(row)) for row in rows))


# -- tokens ------------------------------------------------------------------------------------
class PostgresTokenStore(_Component, TokenStore):
    __slots__ = ()

    async def issue(self, tenant: TenantId, label: str | None = None) -> tuple[TokenInfo, str]:
        token = new_token()
        token_hash = hash_token(token)
        await self._pool.execute(_TOKEN_INSERT, token_hash, tenant.kind, tenant.id, time.time(),
                                 new_token_id(), check_label(label))
        info = await self._get(token_hash)
        assert info is not None
        return info, token

    async def rotate_admin(self) -> tuple[TokenInfo, str]:
        token = new_token()
        return await self._make_admin(hash_token(token)), token

    async def _make_admin(self, token_hash: str) -> TokenInfo:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_TOKEN_ADMIN_LOCK)
            row = await conn.fetchrow(_TOKEN_GET, token_hash)
            check_admin(None if row is None else _token_row(row))
            # The old admin token ends in the same transaction the new one begins.
            await conn.execute(_TOKEN_DELETE_OTHER_ADMINS, token_hash)
            await conn.execute(_TOKEN_INSERT, token_hash, None, None, time.time(),
                               new_token_id(), ADMIN_LABEL)
            row = await conn.fetchrow(_TOKEN_GET, token_hash)
        assert row is not None
        return _token_row(row)

    async def _get(self, token_hash: str) -> TokenInfo | None:
        row = await self._pool.fetchrow(_TOKEN_GET, token_hash)
        return None if row is None else _token_row(row)

    async def resolve(self, token: str) -> TokenInfo | None:
        token_hash = hash_token(token)
        info = await self._get(token_hash)
        now = time.time()
        if info is not None and (info.last_used_at is None or
                                 now - info.last_used_at >= TOKEN_USE_RESOLUTION):
            await self._pool.execute(_TOKEN_TOUCH, now, token_hash)
        return info

    async def ensure_admin(self, token: str) -> None:
        await self._make_admin(hash_token(token))

    async def revoke(self, token: str) -> bool:
        return bool(await self._pool.execute(_TOKEN_DELETE, hash_token(token)) != "DELETE 0")

    async def list_tokens(self) -> list[TokenInfo]:
        return [_token_row(row) for row in await self._pool.fetch(_TOKEN_LIST)]

    async def revoke_id(self, token_id: str) -> TokenInfo | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_TOKEN_BY_ID, token_id)
            if row is None:
                return None
            info = _token_row(row)
            if info.is_admin:
                raise ValueError("that is the admin token: replace it with rotate-admin instead")
            await conn.execute(_TOKEN_DELETE_ID, token_id)
        return info


def _token_row(row: asyncpg.Record | Sequence[Any]) -> TokenInfo:
    return token_info(row[0], row[1], row[2], row[3], row[4], row[5])


# -- timers ------------------------------------------------------------------------------------
class PostgresTimerStore(_Component, TimerStore):
    __slots__ = ()

    async def due_expiries(self, before: float, limit: int) -> list[tuple[TenantId, KVRecord]]:
        return _timer_records(await self._pool.fetch(_KV_DUE, before, limit))

    async def expiries_after(
        self, after: ExpiryCursor, end: float, limit: int, *, shard: Shard | None = None,
    ) -> list[tuple[TenantId, KVRecord]]:
        if shard is None:
            return _timer_records(await self._pool.fetch(_KV_AFTER, end, *after, limit))
        return _timer_records(await self._pool.fetch(
            _KV_AFTER_SHARD, end, *after, limit, shard[1], shard[0]))

    async def delete_if_version(
        self, tenant: TenantId, scope: str, key: str, version: int, *,
        expires_at: float | None = None,
    ) -> bool:
        async def body(conn: _Connection) -> bool:
            if expires_at is None:
                status = await conn.execute(
                    _KV_DELETE_VERSION, tenant.kind, tenant.id, scope, key, version)
            else:
                status = await conn.execute(
                    _KV_DELETE_VERSION_AT, tenant.kind, tenant.id, scope, key, version,
                    expires_at)
            if status == "DELETE 0":
                return False
            await conn.execute(_KV_ROWS_ADD, tenant.kind, tenant.id, -1)
            return True

        return await _retrying(self._pool, body)

    async def delete_if_versions(
        self, tenant: TenantId, keys: Sequence[VersionedKey],
    ) -> list[bool]:
        if not keys:
            return []

        async def body(conn: _Connection) -> list[bool]:
            rows = await conn.fetch(
                _KV_DELETE_VERSIONS, tenant.kind, tenant.id, [item.scope for item in keys],
                [item.key for item in keys], [item.version for item in keys],
                [item.expires_at for item in keys])
            if rows:
                await conn.execute(_KV_ROWS_ADD, tenant.kind, tenant.id, -len(rows))
            deleted = {int(row[0]) for row in rows}
            return [number in deleted for number in range(1, len(keys) + 1)]

        return await _retrying(self._pool, body)

    async def resume_records(self, tenant: TenantId, *, now: float) -> list[KVRecord]:
        rows = await self._pool.fetch(_KV_RESUME, tenant.kind, tenant.id, now)
        return [_record(row[0], row[1], row[2:]) for row in rows]

    async def schedule(
        self, tenant: TenantId, key: str | None, name: str, data: JsonValue, due_at: float, *,
        max_pending: int | None = None,
    ) -> int:
        encoded = dumps_json(data)
        now = time.time()

        async def body(conn: _Connection) -> int:
            if key is not None:
                await conn.execute(_EVENT_CANCEL, tenant.kind, tenant.id, key)
            if max_pending is not None:
                check_pending(
                    int(await conn.fetchval(_EVENT_COUNT, tenant.kind, tenant.id)), max_pending)
            return int(await conn.fetchval(
                _EVENT_INSERT, tenant.kind, tenant.id, key, name, encoded, due_at, now))

        return await _retrying(self._pool, body)

    async def cancel(self, tenant: TenantId, key: str) -> bool:
        return bool(await self._pool.execute(_EVENT_CANCEL, tenant.kind, tenant.id, key)
                    != "DELETE 0")

    async def due_scheduled(self, before: float, limit: int) -> list[ScheduledEvent]:
        rows = await self._pool.fetch(_EVENT_DUE, before, limit)
        return [scheduled_event(row[:]) for row in rows]

    async def scheduled_after(
        self, after: ScheduledCursor, end: float, limit: int, *, shard: Shard | None = None,
    ) -> list[ScheduledEvent]:
        if shard is None:
            rows = await self._pool.fetch(_EVENT_AFTER, end, *after, limit)
        else:
            rows = await self._pool.fetch(_EVENT_AFTER_SHARD, end, *after, limit, shard[1],
                                          shard[0])
        return [scheduled_event(row[:]) for row in rows]

    async def get_scheduled(self, event_id: int) -> ScheduledEvent | None:
        row = await self._pool.fetchrow(_EVENT_GET, event_id)
        return None if row is None else scheduled_event(row[:])

    async def tenants_with_resume_keys(self, shard: Shard, *, now: float) -> list[TenantId]:
        rows = await self._pool.fetch(_RESUME_TENANTS, now, shard[1], shard[0])
        return [TenantId(row[0], row[1]) for row in rows]

    async def has_pending(self, tenant: TenantId, key: str) -> bool:
        return await self._pool.fetchval(_EVENT_HAS, tenant.kind, tenant.id, key) is not None

    async def pending_count(self, tenant: TenantId) -> int:
        return int(await self._pool.fetchval(_EVENT_COUNT, tenant.kind, tenant.id))

    async def remove_scheduled(self, event_id: int) -> bool:
        return bool(await self._pool.execute(_EVENT_REMOVE, event_id) != "DELETE 0")

    async def retry_scheduled(self, event_id: int, due_at: float) -> bool:
        return bool(await self._pool.execute(_EVENT_RETRY, event_id, due_at) != "UPDATE 0")


# -- runs --------------------------------------------------------------------------------------
class PostgresRunStore(_Component, RunStore):
    __slots__ = ()

    async def commit_run(
        self, tenant: TenantId, effects: RunEffects, *, now: float, limits: RunLimits,
    ) -> RunCommit:
        if effects.empty:
            return RunCommit()
        if limits.max_emits is not None:
            check_emits(len(effects.emits), limits.max_emits)

        async def body(conn: _Connection) -> RunCommit:
            return await _commit_run(conn, tenant, effects, now, limits)

        return await _retrying(self._pool, body)

    async def outbox(self, shard: Shard, *, limit: int, after: int = 0) -> list[OutboxEvent]:
        rows = await self._pool.fetch(_OUTBOX_SHARD, after, shard[1], shard[0], limit)
        return [outbox_event(row[:]) for row in rows]

    async def delivered(self, outbox_id: int) -> bool:
        return bool(await self._pool.execute(_OUTBOX_DELETE, outbox_id) != "DELETE 0")


async def _commit_run(
    conn: _Connection, tenant: TenantId, effects: RunEffects, now: float, limits: RunLimits,
) -> RunCommit:
    kind, tenant_id = tenant.kind, tenant.id
    results = await _kv_apply(conn, tenant, effects.writes, now, limits.max_keys) \
        if effects.writes else []
    scheduled: list[ScheduledEvent] = []
    if effects.events:
        await conn.execute(_EVENT_LOCK, _EVENT_LOCK_CLASS, str(tenant))
    for op in effects.events:
        if isinstance(op, RunCancel):
            await conn.execute(_EVENT_CANCEL, kind, tenant_id, op.key)
            continue
        if op.key is not None:
            await conn.execute(_EVENT_CANCEL, kind, tenant_id, op.key)
        if limits.max_pending is not None:
            check_pending(int(await conn.fetchval(_EVENT_COUNT, kind, tenant_id)),
                          limits.max_pending)
        event_id = int(await conn.fetchval(
            _EVENT_INSERT, kind, tenant_id, op.key, op.name, dumps_json(op.data), op.due_at, now))
        scheduled.append(ScheduledEvent(event_id, tenant, op.key, op.name, op.data, op.due_at,
                                        0, now))
    outbox: list[OutboxEvent] = []
    for emit in effects.emits:
        outbox_id = int(await conn.fetchval(
            _OUTBOX_INSERT, kind, tenant_id, emit.name, dumps_json(emit.data), emit.author,
            emit.event_id, now))
        outbox.append(OutboxEvent(outbox_id, tenant, emit.name, emit.data, emit.author,
                                  emit.event_id, now))
    return RunCommit(tuple(results), tuple(scheduled), tuple(outbox))
