"""The embedded store: SQLite in WAL mode, safe for several worker processes sharing one file.

Connections each owned by one thread (``ConnectionThreads``): one writer whose transactions
start with ``BEGIN IMMEDIATE`` (so a read-modify-write such as ``incr`` holds SQLite's single
write lock from its read on, and no update is lost across processes), and readers that WAL
lets run while another connection writes. ``busy_timeout`` makes a process wait for the write
lock instead of failing. ``synchronous=NORMAL`` (the default here) makes a commit survive a
crash of the process; ``synchronous=FULL`` (``?synchronous=full`` in the URL) also survives
power loss, at the cost of one fsync per transaction group.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
from moonshard.store._sqlitethread import ConnectionThreads
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
    PointReads,
    PointReadsClosed,
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
from moonshard.store.migrations import migrate_sqlite
from moonshard.store.sqlite_logs import SqliteTenantLogStore
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId
from moonshard.values import JsonValue, dumps_json, loads_json

__all__ = ["SqliteStore"]

_SYNCHRONOUS = ("off", "normal", "full", "extra")
_MMAP_BYTES = 256 * 1024 * 1024

# -- key-value ---------------------------------------------------------------------------------
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
# A worker's tenants: Discord's shard formula on the snowflake (TenantId keeps them < 2**63).
_SHARD = " AND ((CAST(tenant_id AS INTEGER) >> 22) % ?) = ?"
_KV_TENANT = "tenant_kind = ? AND tenant_id = ?"
_KV_KEY = f"{_KV_TENANT} AND scope = ? AND key = ?"
_KV_FIELDS = "value, version, created_at, updated_at, expires_at, resume"
_KV_GET = f"SELECT {_KV_FIELDS} FROM kv WHERE {_KV_KEY} AND {_LIVE}"
_KV_ROW = f"SELECT {_KV_FIELDS} FROM kv WHERE {_KV_KEY}"
# One statement, so one snapshot: the key's row (even expired) and the tenant's row count.
_KV_LOAD_ROW = (
    "SELECT k.value, k.version, k.created_at, k.updated_at, k.expires_at, k.resume, c.row_count"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN kv AS k ON k.tenant_kind = ?1 AND k.tenant_id = ?2 AND k.scope = ?3"
    " AND k.key = ?4"
    " LEFT JOIN kv_counts AS c ON c.tenant_kind = ?1 AND c.tenant_id = ?2")
_KV_FIND = f"SELECT key, {_KV_FIELDS} FROM kv WHERE {_KV_TENANT} AND scope = ? AND {_LIVE}"
_KV_COUNT_SCOPE = f"SELECT COUNT(*) FROM kv WHERE {_KV_TENANT} AND scope = ? AND {_LIVE}"
_KV_COUNT_ALL = f"SELECT COUNT(*) FROM kv WHERE {_KV_TENANT} AND {_LIVE}"
_KV_INSERT = (
    "INSERT INTO kv (tenant_kind, tenant_id, scope, key, value, version, created_at, updated_at,"
    " expires_at, resume, num_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_KV_UPDATE = (
    "UPDATE kv SET value = ?, version = ?, created_at = ?, updated_at = ?, expires_at = ?,"
    f" resume = ?, num_value = ? WHERE {_KV_KEY}")
# Leaderboards: one range of the kv_top index each (see KVStore.top).
# INDEXED BY: for the ties after a key, the planner would rather range over the primary key
# (key > ?), which reads every later key of the scope.
_KV_TOP_ROWS = (
    f"SELECT key, {_KV_FIELDS} FROM kv INDEXED BY kv_top WHERE {_KV_TENANT} AND scope = ?"
    f" AND num_value IS NOT NULL AND {_LIVE}")
_KV_TOP = f"{_KV_TOP_ROWS} ORDER BY num_value DESC, key LIMIT ?"
_KV_TOP_TIED = f"{_KV_TOP_ROWS} AND num_value = ? AND key > ? ORDER BY key LIMIT ?"
_KV_TOP_BELOW = f"{_KV_TOP_ROWS} AND num_value < ? ORDER BY num_value DESC, key LIMIT ?"
_KV_AHEAD = (
    "SELECT (SELECT COUNT(*) FROM kv INDEXED BY kv_top WHERE tenant_kind = ?1 AND tenant_id = ?2"
    " AND scope = ?3 AND num_value > ?4 AND (expires_at IS NULL OR expires_at > ?6))"
    " + (SELECT COUNT(*) FROM kv INDEXED BY kv_top WHERE tenant_kind = ?1 AND tenant_id = ?2"
    " AND scope = ?3 AND num_value = ?4 AND key < ?5 AND (expires_at IS NULL OR expires_at > ?6))")
_KV_DELETE = f"DELETE FROM kv WHERE {_KV_KEY}"
_KV_DELETE_VERSION = f"DELETE FROM kv WHERE {_KV_KEY} AND version = ?"
_KV_DELETE_VERSION_AT = f"{_KV_DELETE_VERSION} AND expires_at = ?"
_KV_ROWS = f"SELECT row_count FROM kv_counts WHERE {_KV_TENANT}"
_KV_ROWS_ADD = (
    "INSERT INTO kv_counts (tenant_kind, tenant_id, row_count) VALUES (?, ?, ?)"
    " ON CONFLICT (tenant_kind, tenant_id)"
    " DO UPDATE SET row_count = row_count + excluded.row_count")
_KV_TIMER_FIELDS = f"tenant_kind, tenant_id, scope, key, {_KV_FIELDS}"
_KV_DUE = (
    f"SELECT {_KV_TIMER_FIELDS} FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?"
    " ORDER BY expires_at LIMIT ?")
_KV_AFTER = (
    f"SELECT {_KV_TIMER_FIELDS} FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?"
    " AND (expires_at, tenant_kind, tenant_id, scope, key) > (?, ?, ?, ?, ?)"
    " ORDER BY expires_at, tenant_kind, tenant_id, scope, key LIMIT ?")
_KV_AFTER_SHARD = _KV_AFTER.replace(" ORDER BY", f"{_SHARD} ORDER BY")
_KV_RESUME = (
    f"SELECT scope, key, {_KV_FIELDS} FROM kv WHERE {_KV_TENANT} AND resume = 1 AND {_LIVE}"
    " ORDER BY scope, key")

# -- templates ---------------------------------------------------------------------------------
_SET_VERSION = f"SELECT version FROM template_sets WHERE {_KV_TENANT}"
_SET_BUMP = (
    "INSERT INTO template_sets (tenant_kind, tenant_id, version, updated_at) VALUES (?, ?, 1, ?)"
    " ON CONFLICT (tenant_kind, tenant_id) DO UPDATE"
    " SET version = version + 1, updated_at = excluded.updated_at RETURNING version")
_TEMPLATES = (
    "SELECT name, files, events, paused, version, updated_at FROM templates"
    f" WHERE {_KV_TENANT} ORDER BY name")
_TEMPLATE_EXISTS = f"SELECT 1 FROM templates WHERE {_KV_TENANT} AND name = ?"
_TEMPLATE_COUNT = f"SELECT COUNT(*) FROM templates WHERE {_KV_TENANT}"
_TEMPLATE_PUT = (
    "INSERT INTO templates (tenant_kind, tenant_id, name, files, events, paused, version,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant_kind, tenant_id, name) DO UPDATE SET files = excluded.files,"
    " events = excluded.events, paused = excluded.paused, version = excluded.version,"
    " updated_at = excluded.updated_at")
_TEMPLATE_DELETE = f"DELETE FROM templates WHERE {_KV_TENANT} AND name = ?"
_SET_TENANTS = (
    "SELECT tenant_kind, tenant_id FROM template_sets WHERE version > 0"
    " AND (tenant_kind, tenant_id) > (?, ?) ORDER BY tenant_kind, tenant_id LIMIT ?")
_VERSION_PUT = (
    "INSERT INTO template_versions (tenant_kind, tenant_id, name, version, files, events,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
# Everything at or below the oldest version that no longer fits (none while fewer are kept).
_VERSION_PRUNE = (
    "DELETE FROM template_versions WHERE tenant_kind = ?1 AND tenant_id = ?2 AND name = ?3"
    " AND version <= (SELECT version FROM template_versions WHERE tenant_kind = ?1"
    " AND tenant_id = ?2 AND name = ?3 ORDER BY version DESC LIMIT 1 OFFSET ?4)")
_VERSIONS = (
    f"SELECT version, events, updated_at FROM template_versions WHERE {_KV_TENANT}"
    " AND name = ? ORDER BY version DESC")
_VERSION_GET = (
    f"SELECT files, events, updated_at FROM template_versions WHERE {_KV_TENANT}"
    " AND name = ? AND version = ?")
_VERSIONS_DELETE = f"DELETE FROM template_versions WHERE {_KV_TENANT} AND name = ?"

# -- tokens ------------------------------------------------------------------------------------
_TOKEN_FIELDS = "tenant_kind, tenant_id, created_at, id, label, last_used_at"
_TOKEN_INSERT = (
    "INSERT INTO api_tokens (token_hash, tenant_kind, tenant_id, created_at, id, label)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO NOTHING")
_TOKEN_GET = f"SELECT {_TOKEN_FIELDS} FROM api_tokens WHERE token_hash = ?"
_TOKEN_TOUCH = "UPDATE api_tokens SET last_used_at = ? WHERE token_hash = ?"
_TOKEN_DELETE = "DELETE FROM api_tokens WHERE token_hash = ?"
_TOKEN_DELETE_OTHER_ADMINS = (
    "DELETE FROM api_tokens WHERE tenant_kind IS NULL AND token_hash <> ?")
_TOKEN_LIST = (
    f"SELECT {_TOKEN_FIELDS} FROM api_tokens"
    " ORDER BY tenant_kind IS NOT NULL, created_at, id")
_TOKEN_BY_ID = f"SELECT {_TOKEN_FIELDS} FROM api_tokens WHERE id = ?"
_TOKEN_DELETE_ID = "DELETE FROM api_tokens WHERE id = ?"

# -- scheduled events --------------------------------------------------------------------------
_EVENT_FIELDS = "id, tenant_kind, tenant_id, key, name, data, due_at, attempt, created_at"
_EVENT_INSERT = (
    "INSERT INTO scheduled_events (tenant_kind, tenant_id, key, name, data, due_at, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)")
_EVENT_CANCEL = f"DELETE FROM scheduled_events WHERE {_KV_TENANT} AND key = ?"
_EVENT_COUNT = f"SELECT COUNT(*) FROM scheduled_events WHERE {_KV_TENANT}"
_EVENT_DUE = (
    f"SELECT {_EVENT_FIELDS} FROM scheduled_events WHERE due_at <= ? ORDER BY due_at, id LIMIT ?")
_EVENT_AFTER = (
    f"SELECT {_EVENT_FIELDS} FROM scheduled_events WHERE due_at <= ? AND (due_at, id) > (?, ?)"
    " ORDER BY due_at, id LIMIT ?")
_EVENT_AFTER_SHARD = _EVENT_AFTER.replace(" ORDER BY", f"{_SHARD} ORDER BY")
_EVENT_HAS = f"SELECT 1 FROM scheduled_events WHERE {_KV_TENANT} AND key = ?"
_EVENT_GET = f"SELECT {_EVENT_FIELDS} FROM scheduled_events WHERE id = ?"
_RESUME_TENANTS = (
    f"SELECT DISTINCT tenant_kind, tenant_id FROM kv WHERE resume = 1 AND {_LIVE}{_SHARD}"
    " ORDER BY tenant_kind, tenant_id")
_EVENT_REMOVE = "DELETE FROM scheduled_events WHERE id = ?"
_EVENT_RETRY = "UPDATE scheduled_events SET due_at = ?, attempt = attempt + 1 WHERE id = ?"

# -- the outbox --------------------------------------------------------------------------------
_OUTBOX_FIELDS = "id, tenant_kind, tenant_id, name, data, author, event_id, created_at"
_OUTBOX_INSERT = (
    "INSERT INTO event_outbox (tenant_kind, tenant_id, name, data, author, event_id, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)")
_OUTBOX_SHARD = (
    f"SELECT {_OUTBOX_FIELDS} FROM event_outbox WHERE id > ?"
    " AND ((CAST(tenant_id AS INTEGER) >> 22) % ?) = ? ORDER BY id LIMIT ?")
_OUTBOX_DELETE = "DELETE FROM event_outbox WHERE id = ?"


class SqliteStore(Store):
    """The embedded default store. Open with ``await SqliteStore.open(path)``."""

    __slots__ = ("_points", "_reader", "_writer", "kv", "logs", "path", "runs", "templates",
                 "timers", "tokens")

    def __init__(self, path: Path, writer: ConnectionThreads, reader: ConnectionThreads,
                 point_reads: SqlitePointReads) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._points = point_reads
        self.kv = SqliteKVStore(writer, reader, point_reads)
        self.templates = SqliteTemplateStore(writer, reader)
        self.tokens = SqliteTokenStore(writer, reader)
        self.timers = SqliteTimerStore(writer, reader)
        self.runs = SqliteRunStore(writer, reader)
        self.logs = SqliteTenantLogStore(writer, reader)

    @classmethod
    async def open(
        cls, path: str | Path, *, busy_timeout: float = 10.0, synchronous: str = "normal",
        readers: int = 2,
    ) -> SqliteStore:
        """Opens (creating the file and its folder if needed) and migrates the database.

        ``readers`` connections serve reads: SQLite releases the GIL while it searches, so a
        second reader overlaps one read's search with another's Python work.
        """
        synchronous = synchronous.lower()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"bad SQLite synchronous mode {synchronous!r}: "
                             f"use one of {', '.join(_SYNCHRONOUS)}")
        if readers < 1:
            raise ValueError("an SQLite store needs at least one reader")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = ConnectionThreads(
            lambda: _connect(path, busy_timeout, synchronous, query_only=False),
            name=f"moonshard-sqlite-writer:{path.name}")
        reader: ConnectionThreads | None = None
        try:
            await writer.started()
            await writer.run(migrate_sqlite)
            reader = ConnectionThreads(
                lambda: _connect(path, busy_timeout, synchronous, query_only=True),
                name=f"moonshard-sqlite-reader:{path.name}", count=readers,
                snapshot_reads=True)
            await reader.started()
        except BaseException as error:
            await writer.close()
            if reader is not None:
                await reader.close()
            if isinstance(error, sqlite3.Error):
                error.add_note(f"while opening the SQLite database {path}")
            raise
        return cls(path, writer, reader, SqlitePointReads(path, busy_timeout))

    async def close(self) -> None:
        self._points.close()
        await self._reader.close()
        await self._writer.close()


def _connect(
    path: Path, busy_timeout: float, synchronous: str, *, query_only: bool,
) -> sqlite3.Connection:
    # isolation_level=None: autocommit, so every transaction here is an explicit BEGIN.
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                           cached_statements=256)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        # Reading pages through a memory map saves a system call per page read.
        conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        if query_only:
            conn.execute("PRAGMA query_only=1")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction around several statements, unless one is open already (the reader
    threads run batches of reads in one)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _record(scope: str, key: str, row: Sequence[Any], *, decode: bool = True) -> KVRecord:
    """A KVRecord from ``_KV_FIELDS``. ``decode=False`` skips parsing a value nobody reads."""
    value = loads_json(row[0]) if decode else None
    return KVRecord(key, scope, value, row[1], row[2], row[3], row[4], bool(row[5]))


def _timer_record(row: Sequence[Any]) -> tuple[TenantId, KVRecord]:
    return TenantId(row[0], row[1]), _record(row[2], row[3], row[4:])


class _Component:
    __slots__ = ("_reader", "_writer")

    def __init__(self, writer: ConnectionThreads, reader: ConnectionThreads) -> None:
        self._writer = writer
        self._reader = reader


# -- key-value ---------------------------------------------------------------------------------
class SqlitePointReads(PointReads):
    """``kv`` point reads on the calling thread (a worker's Lua thread, inside a run's step).

    Each thread gets its own read-only connection to the database file, opened on its first
    read and held by this object's ``threading.local`` (so it is closed when the thread ends,
    or when this object goes); the store's writer stays the only connection that writes. Each
    read is one autocommit statement run to its end (``fetchall``), so its WAL read
    transaction ends with it: no snapshot is held between reads, and a read sees every commit
    made before it began (a run reads what an earlier run of its tenant committed).

    A connection is only ever touched by its own thread, closing included: after ``close()``
    each thread closes its own on its next read (which then fails, so its caller falls back).
    """

    __slots__ = ("_busy_timeout", "_closed", "_path", "_served", "_thread")

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._thread = threading.local()
        self._closed = False
        self._served = 0

    @property
    def served(self) -> int:
        return self._served

    def get(self, tenant: TenantId, scope: str, key: str, *, now: float) -> KVRecord | None:
        rows = self._connection().execute(
            _KV_GET, (tenant.kind, tenant.id, scope, key, now)).fetchall()
        # A statistic: threads may race on it, which costs a count, never a read.
        self._served += 1
        return _record(scope, key, rows[0]) if rows else None

    def load_rows(self, tenant: TenantId, keys: Sequence[tuple[str, str]],
                  ) -> tuple[dict[tuple[str, str], KVRecord], int]:
        found = _kv_load_rows(self._connection(), tenant, tuple(keys))
        self._served += 1
        return found

    def count(self, tenant: TenantId, scope: str | None, *, now: float) -> int:
        counted = _kv_count(self._connection(), tenant, scope, now)
        self._served += 1
        return counted

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on its first read); raises once closed."""
        conn: sqlite3.Connection | None = getattr(self._thread, "conn", None)
        if self._closed:
            self._close_own(conn)
            raise PointReadsClosed("the store is closed")
        return conn if conn is not None else self._open()

    def _open(self) -> sqlite3.Connection:
        uri = f"file:{urllib.parse.quote(str(self._path))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout,
                               isolation_level=None, cached_statements=64)
        try:
            conn.execute("PRAGMA query_only=1")
            conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        except BaseException:
            conn.close()
            raise
        self._thread.conn = conn
        return conn

    def _close_own(self, conn: sqlite3.Connection | None) -> None:
        if conn is not None:
            self._thread.conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        """Ends the reads: the calling thread's connection now, the others' at their next
        read (or when their thread ends)."""
        self._closed = True
        self._close_own(getattr(self._thread, "conn", None))


class SqliteKVStore(_Component, KVStore):
    __slots__ = ("_points",)

    def __init__(self, writer: ConnectionThreads, reader: ConnectionThreads,
                 points: SqlitePointReads) -> None:
        super().__init__(writer, reader)
        self._points = points

    def point_reads(self) -> SqlitePointReads:
        return self._points

    async def get(self, tenant: TenantId, scope: str, key: str, *, now: float) -> KVRecord | None:
        return await self._reader.run(_kv_get, tenant, scope, key, now)

    async def load_rows(
        self, tenant: TenantId, keys: Sequence[tuple[str, str]],
    ) -> tuple[dict[tuple[str, str], KVRecord], int]:
        return await self._reader.run(_kv_load_rows, tenant, tuple(keys))

    async def find(
        self, tenant: TenantId, scope: str, prefix: str, *, after: str | None, limit: int,
        now: float,
    ) -> list[KVRecord]:
        return await self._reader.run(_kv_find, tenant, scope, prefix, after, limit, now)

    async def count(self, tenant: TenantId, scope: str | None, *, now: float) -> int:
        return await self._reader.run(_kv_count, tenant, scope, now)

    async def top(
        self, tenant: TenantId, scope: str, *, after: TopPlace | None, limit: int, now: float,
    ) -> list[KVRecord]:
        return await self._reader.run(_kv_top, tenant, scope, after, limit, now)

    async def ahead(self, tenant: TenantId, scope: str, place: TopPlace, *, now: float) -> int:
        row = await self._reader.run(
            _fetch_all, _KV_AHEAD, (tenant.kind, tenant.id, scope, place[0], place[1], now))
        return int(row[0][0])

    async def apply(
        self, tenant: TenantId, writes: Sequence[KVWrite], *, now: float,
        max_keys: int | None = None,
    ) -> list[KVResult]:
        if not writes:
            return []
        return await self._writer.transact(_kv_apply, tenant, tuple(writes), now, max_keys)


def _kv_get(
    conn: sqlite3.Connection, tenant: TenantId, scope: str, key: str, now: float,
) -> KVRecord | None:
    row = conn.execute(_KV_GET, (tenant.kind, tenant.id, scope, key, now)).fetchone()
    return None if row is None else _record(scope, key, row)


def _kv_load_rows(
    conn: sqlite3.Connection, tenant: TenantId, keys: tuple[tuple[str, str], ...],
) -> tuple[dict[tuple[str, str], KVRecord], int]:
    kind, tenant_id = tenant.kind, tenant.id
    if len(keys) == 1:
        # The common case in one statement (so one snapshot) with no transaction to open.
        ((scope, key),) = keys
        row = conn.execute(_KV_LOAD_ROW, (kind, tenant_id, scope, key)).fetchone()
        found = {} if row[1] is None else {(scope, key): _record(scope, key, row)}
        return found, int(row[6] or 0)
    with _snapshot(conn):  # every row and the count from one snapshot
        rows: dict[tuple[str, str], KVRecord] = {}
        for scope, key in keys:
            row = conn.execute(_KV_ROW, (kind, tenant_id, scope, key)).fetchone()
            if row is not None:
                rows[scope, key] = _record(scope, key, row)
        return rows, _stored_rows(conn, tenant)


def _stored_rows(conn: sqlite3.Connection, tenant: TenantId) -> int:
    row = conn.execute(_KV_ROWS, (tenant.kind, tenant.id)).fetchone()
    return 0 if row is None else int(row[0])


def _kv_find(
    conn: sqlite3.Connection, tenant: TenantId, scope: str, prefix: str, after: str | None,
    limit: int, now: float,
) -> list[KVRecord]:
    sql = _KV_FIND
    params: list[object] = [tenant.kind, tenant.id, scope, now]
    if prefix:
        sql += " AND key >= ?"
        params.append(prefix)
        end = kvlogic.prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
    if after is not None:
        sql += " AND key > ?"
        params.append(after)
    sql += " ORDER BY key LIMIT ?"
    params.append(limit)
    return [_record(scope, row[0], row[1:]) for row in conn.execute(sql, params)]


def _kv_count(
    conn: sqlite3.Connection, tenant: TenantId, scope: str | None, now: float,
) -> int:
    if scope is None:
        row = conn.execute(_KV_COUNT_ALL, (tenant.kind, tenant.id, now)).fetchone()
    else:
        row = conn.execute(_KV_COUNT_SCOPE, (tenant.kind, tenant.id, scope, now)).fetchone()
    return int(row[0])


def _kv_top(
    conn: sqlite3.Connection, tenant: TenantId, scope: str, after: TopPlace | None,
    limit: int, now: float,
) -> list[KVRecord]:
    params = (tenant.kind, tenant.id, scope, now)
    if after is None:
        rows = conn.execute(_KV_TOP, (*params, limit)).fetchall()
    else:
        # After (n, k): the rest of n's ties (keys above k), then the numbers below n. Two
        # index ranges, where one OR of both would scan from the top.
        with _snapshot(conn):
            rows = conn.execute(_KV_TOP_TIED, (*params, after[0], after[1], limit)).fetchall()
            if len(rows) < limit:
                rows += conn.execute(
                    _KV_TOP_BELOW, (*params, after[0], limit - len(rows))).fetchall()
    return [_record(scope, row[0], row[1:]) for row in rows]


def _kv_apply(
    conn: sqlite3.Connection, tenant: TenantId, writes: tuple[KVWrite, ...], now: float,
    max_keys: int | None,
) -> list[KVResult]:
    """Runs inside the writer's BEGIN IMMEDIATE: rows read here cannot change before commit."""
    kind, tenant_id = tenant.kind, tenant.id
    needs_value = {(w.scope, w.key) for w in writes if isinstance(w, KVIncr | KVExpire)}
    rows: dict[tuple[str, str], KVRecord] = {}
    for scope, key in kvlogic.touched_keys(writes):
        row = conn.execute(_KV_ROW, (kind, tenant_id, scope, key)).fetchone()
        if row is not None:
            rows[scope, key] = _record(scope, key, row, decode=(scope, key) in needs_value)
    plan = kvlogic.plan_writes(writes, rows, now)
    if max_keys is not None and plan.live_delta > 0 and kvlogic.needs_live_count(
            plan, max_keys, _stored_rows(conn, tenant)):
        live = int(conn.execute(_KV_COUNT_ALL, (kind, tenant_id, now)).fetchone()[0])
        kvlogic.check_key_limit(plan.live_delta, max_keys, live)
    for scope, key in plan.deletes:
        conn.execute(_KV_DELETE, (kind, tenant_id, scope, key))
    for record in plan.inserts:
        conn.execute(_KV_INSERT, (
            kind, tenant_id, record.scope, record.key, kvlogic.encode_value(record.value),
            record.version, record.created_at, record.updated_at, record.expires_at,
            int(record.resume), kvlogic.rank_number(record.value)))
    for record in plan.updates:
        conn.execute(_KV_UPDATE, (
            kvlogic.encode_value(record.value), record.version, record.created_at,
            record.updated_at, record.expires_at, int(record.resume),
            kvlogic.rank_number(record.value), kind, tenant_id, record.scope, record.key))
    if plan.row_delta:
        conn.execute(_KV_ROWS_ADD, (kind, tenant_id, plan.row_delta))
    return plan.results


# -- templates ---------------------------------------------------------------------------------
class SqliteTemplateStore(_Component, TemplateStore):
    __slots__ = ()

    async def load_set(self, tenant: TenantId) -> TemplateSet:
        return await self._reader.run(_load_set_snapshot, tenant)

    async def put(
        self, tenant: TenantId, template: Template, *, max_templates: int | None = None,
    ) -> TemplateSet:
        return await self._writer.transact(_put_template, tenant, template, max_templates,
                                           time.time())

    async def delete(self, tenant: TenantId, name: str) -> TemplateSet | None:
        return await self._writer.transact(_delete_template, tenant, name, time.time())

    async def tenants(self, *, after: TenantId | None, limit: int) -> list[TenantId]:
        start = ("", "") if after is None else (after.kind, after.id)
        rows = await self._reader.run(_fetch_all, _SET_TENANTS, (*start, limit))
        return [TenantId(row[0], row[1]) for row in rows]

    async def history(self, tenant: TenantId, name: str) -> list[TemplateVersion]:
        rows = await self._reader.run(_fetch_all, _VERSIONS, (tenant.kind, tenant.id, name))
        return [template_version(row) for row in rows]

    async def version(self, tenant: TenantId, name: str, version: int) -> Template | None:
        rows = await self._reader.run(
            _fetch_all, _VERSION_GET, (tenant.kind, tenant.id, name, version))
        return None if not rows else template_from_row(name, rows[0][0], rows[0][1], False,
                                                       version, rows[0][2])


def _load_set_snapshot(conn: sqlite3.Connection, tenant: TenantId) -> TemplateSet:
    with _snapshot(conn):  # the version and the templates from one snapshot
        return _read_set(conn, tenant)


def _read_set(conn: sqlite3.Connection, tenant: TenantId) -> TemplateSet:
    params = (tenant.kind, tenant.id)
    row = conn.execute(_SET_VERSION, params).fetchone()
    templates = tuple(
        template_from_row(*fields) for fields in conn.execute(_TEMPLATES, params).fetchall())
    return TemplateSet(tenant, 0 if row is None else int(row[0]), templates)


def _put_template(
    conn: sqlite3.Connection, tenant: TenantId, template: Template, max_templates: int | None,
    now: float,
) -> TemplateSet:
    params = (tenant.kind, tenant.id)
    if max_templates is not None and conn.execute(
            _TEMPLATE_EXISTS, (*params, template.name)).fetchone() is None:
        check_template_count(int(conn.execute(_TEMPLATE_COUNT, params).fetchone()[0]),
                             max_templates)
    # fetchall: a RETURNING statement must run to its end before the transaction can commit.
    version = int(conn.execute(_SET_BUMP, (*params, now)).fetchall()[0][0])
    files, events = dumps_json(dict(template.files)), dumps_json(list(template.events))
    conn.execute(_TEMPLATE_PUT, (
        *params, template.name, files, events, int(template.paused), version, now))
    conn.execute(_VERSION_PUT, (*params, template.name, version, files, events, now))
    conn.execute(_VERSION_PRUNE, (*params, template.name, TEMPLATE_VERSIONS_KEPT))
    return _read_set(conn, tenant)


def _delete_template(
    conn: sqlite3.Connection, tenant: TenantId, name: str, now: float,
) -> TemplateSet | None:
    params = (tenant.kind, tenant.id)
    if conn.execute(_TEMPLATE_DELETE, (*params, name)).rowcount == 0:
        return None
    conn.execute(_VERSIONS_DELETE, (*params, name))
    conn.execute(_SET_BUMP, (*params, now)).fetchall()
    return _read_set(conn, tenant)


# -- tokens ------------------------------------------------------------------------------------
class SqliteTokenStore(_Component, TokenStore):
    __slots__ = ()

    async def issue(self, tenant: TenantId, label: str | None = None) -> tuple[TokenInfo, str]:
        token = new_token()
        info = await self._writer.transact(_token_insert, hash_token(token), tenant,
                                           time.time(), check_label(label))
        return info, token

    async def rotate_admin(self) -> tuple[TokenInfo, str]:
        token = new_token()
        info = await self._writer.transact(_token_make_admin, hash_token(token), time.time())
        return info, token

    async def resolve(self, token: str) -> TokenInfo | None:
        token_hash = hash_token(token)
        info = await self._reader.run(_token_get, token_hash)
        now = time.time()
        if info is not None and (info.last_used_at is None or
                                 now - info.last_used_at >= TOKEN_USE_RESOLUTION):
            await self._writer.transact(_token_touch, token_hash, now)
        return info

    async def ensure_admin(self, token: str) -> None:
        await self._writer.transact(_token_make_admin, hash_token(token), time.time())

    async def revoke(self, token: str) -> bool:
        return await self._writer.transact(_token_delete, hash_token(token))

    async def list_tokens(self) -> list[TokenInfo]:
        return await self._reader.run(_token_list)

    async def revoke_id(self, token_id: str) -> TokenInfo | None:
        return await self._writer.transact(_token_delete_id, token_id)


def _token_row(row: Sequence[Any]) -> TokenInfo:
    return token_info(row[0], row[1], row[2], row[3], row[4], row[5])


def _token_insert(
    conn: sqlite3.Connection, token_hash: str, tenant: TenantId | None, now: float,
    label: str | None,
) -> TokenInfo:
    kind, tenant_id = (None, None) if tenant is None else (tenant.kind, tenant.id)
    conn.execute(_TOKEN_INSERT, (token_hash, kind, tenant_id, now, new_token_id(), label))
    info = _token_get(conn, token_hash)
    assert info is not None
    return info


def _token_get(conn: sqlite3.Connection, token_hash: str) -> TokenInfo | None:
    row = conn.execute(_TOKEN_GET, (token_hash,)).fetchone()
    return None if row is None else _token_row(row)


def _token_touch(conn: sqlite3.Connection, token_hash: str, now: float) -> None:
    conn.execute(_TOKEN_TOUCH, (now, token_hash))


def _token_make_admin(conn: sqlite3.Connection, token_hash: str, now: float) -> TokenInfo:
    check_admin(_token_get(conn, token_hash))
    # The old admin token ends in the same transaction the new one begins.
    conn.execute(_TOKEN_DELETE_OTHER_ADMINS, (token_hash,))
    return _token_insert(conn, token_hash, None, now, ADMIN_LABEL)


def _token_delete(conn: sqlite3.Connection, token_hash: str) -> bool:
    return conn.execute(_TOKEN_DELETE, (token_hash,)).rowcount > 0


def _token_list(conn: sqlite3.Connection) -> list[TokenInfo]:
    return [_token_row(row) for row in conn.execute(_TOKEN_LIST)]


def _token_delete_id(conn: sqlite3.Connection, token_id: str) -> TokenInfo | None:
    row = conn.execute(_TOKEN_BY_ID, (token_id,)).fetchone()
    if row is None:
        return None
    info = _token_row(row)
    if info.is_admin:
        raise ValueError("that is the admin token: replace it with rotate-admin instead")
    conn.execute(_TOKEN_DELETE_ID, (token_id,))
    return info


def _fetch_all(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


# -- timers ------------------------------------------------------------------------------------
class SqliteTimerStore(_Component, TimerStore):
    __slots__ = ()

    async def due_expiries(self, before: float, limit: int) -> list[tuple[TenantId, KVRecord]]:
        return await self._reader.run(_timers_query, _KV_DUE, (before, limit))

    async def expiries_after(
        self, after: ExpiryCursor, end: float, limit: int, *, shard: Shard | None = None,
    ) -> list[tuple[TenantId, KVRecord]]:
        if shard is None:
            return await self._reader.run(_timers_query, _KV_AFTER, (end, *after, limit))
        return await self._reader.run(_timers_query, _KV_AFTER_SHARD,
                                      (end, *after, shard[1], shard[0], limit))

    async def delete_if_version(
        self, tenant: TenantId, scope: str, key: str, version: int, *,
        expires_at: float | None = None,
    ) -> bool:
        return await self._writer.transact(
            _delete_if_version, tenant, scope, key, version, expires_at)

    async def delete_if_versions(
        self, tenant: TenantId, keys: Sequence[VersionedKey],
    ) -> list[bool]:
        if not keys:
            return []
        return await self._writer.transact(_delete_if_versions, tenant, tuple(keys))

    async def resume_records(self, tenant: TenantId, *, now: float) -> list[KVRecord]:
        return await self._reader.run(_resume_records, tenant, now)

    async def schedule(
        self, tenant: TenantId, key: str | None, name: str, data: JsonValue, due_at: float, *,
        max_pending: int | None = None,
    ) -> int:
        return await self._writer.transact(
            _schedule, tenant, key, name, dumps_json(data), due_at, max_pending, time.time())

    async def cancel(self, tenant: TenantId, key: str) -> bool:
        return await self._writer.transact(_cancel, tenant, key)

    async def due_scheduled(self, before: float, limit: int) -> list[ScheduledEvent]:
        return await self._reader.run(_due_scheduled, before, limit)

    async def scheduled_after(
        self, after: ScheduledCursor, end: float, limit: int, *, shard: Shard | None = None,
    ) -> list[ScheduledEvent]:
        return await self._reader.run(_scheduled_after, after, end, limit, shard)

    async def get_scheduled(self, event_id: int) -> ScheduledEvent | None:
        return await self._reader.run(_get_scheduled, event_id)

    async def tenants_with_resume_keys(self, shard: Shard, *, now: float) -> list[TenantId]:
        return await self._reader.run(_resume_tenants, shard, now)

    async def has_pending(self, tenant: TenantId, key: str) -> bool:
        return await self._reader.run(_has_pending, tenant, key)

    async def pending_count(self, tenant: TenantId) -> int:
        return await self._reader.run(_pending_count, tenant)

    async def remove_scheduled(self, event_id: int) -> bool:
        return await self._writer.transact(_remove_scheduled, event_id)

    async def retry_scheduled(self, event_id: int, due_at: float) -> bool:
        return await self._writer.transact(_retry_scheduled, event_id, due_at)


def _timers_query(
    conn: sqlite3.Connection, sql: str, params: tuple[float | str | int, ...],
) -> list[tuple[TenantId, KVRecord]]:
    return [_timer_record(row) for row in conn.execute(sql, params).fetchall()]


def _delete_if_version(
    conn: sqlite3.Connection, tenant: TenantId, scope: str, key: str, version: int,
    expires_at: float | None,
) -> bool:
    params: tuple[object, ...] = (tenant.kind, tenant.id, scope, key, version)
    if expires_at is None:
        deleted = conn.execute(_KV_DELETE_VERSION, params).rowcount > 0
    else:
        deleted = conn.execute(_KV_DELETE_VERSION_AT, (*params, expires_at)).rowcount > 0
    if deleted:
        conn.execute(_KV_ROWS_ADD, (tenant.kind, tenant.id, -1))
    return deleted


def _delete_if_versions(
    conn: sqlite3.Connection, tenant: TenantId, keys: tuple[VersionedKey, ...],
) -> list[bool]:
    kind, tenant_id = tenant.kind, tenant.id
    deleted: list[bool] = []
    for item in keys:
        params: tuple[object, ...] = (kind, tenant_id, item.scope, item.key, item.version)
        if item.expires_at is None:
            cursor = conn.execute(_KV_DELETE_VERSION, params)
        else:
            cursor = conn.execute(_KV_DELETE_VERSION_AT, (*params, item.expires_at))
        deleted.append(cursor.rowcount > 0)
    if any(deleted):
        conn.execute(_KV_ROWS_ADD, (kind, tenant_id, -sum(deleted)))
    return deleted


def _resume_records(conn: sqlite3.Connection, tenant: TenantId, now: float) -> list[KVRecord]:
    rows = conn.execute(_KV_RESUME, (tenant.kind, tenant.id, now)).fetchall()
    return [_record(row[0], row[1], row[2:]) for row in rows]


def _schedule(
    conn: sqlite3.Connection, tenant: TenantId, key: str | None, name: str, data: str,
    due_at: float, max_pending: int | None, now: float,
) -> int:
    if key is not None:
        conn.execute(_EVENT_CANCEL, (tenant.kind, tenant.id, key))
    if max_pending is not None:
        check_pending(_pending_count(conn, tenant), max_pending)
    cursor = conn.execute(_EVENT_INSERT, (tenant.kind, tenant.id, key, name, data, due_at, now))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _cancel(conn: sqlite3.Connection, tenant: TenantId, key: str) -> bool:
    return conn.execute(_EVENT_CANCEL, (tenant.kind, tenant.id, key)).rowcount > 0


def _due_scheduled(conn: sqlite3.Connection, before: float, limit: int) -> list[ScheduledEvent]:
    return [scheduled_event(row)
            for row in conn.execute(_EVENT_DUE, (before, limit)).fetchall()]


def _scheduled_after(
    conn: sqlite3.Connection, after: ScheduledCursor, end: float, limit: int,
    shard: Shard | None,
) -> list[ScheduledEvent]:
    if shard is None:
        rows = conn.execute(_EVENT_AFTER, (end, *after, limit)).fetchall()
    else:
        rows = conn.execute(
            _EVENT_AFTER_SHARD, (end, *after, shard[1], shard[0], limit)).fetchall()
    return [scheduled_event(row) for row in rows]


def _get_scheduled(conn: sqlite3.Connection, event_id: int) -> ScheduledEvent | None:
    row = conn.execute(_EVENT_GET, (event_id,)).fetchone()
    return None if row is None else scheduled_event(row)


def _resume_tenants(conn: sqlite3.Connection, shard: Shard, now: float) -> list[TenantId]:
    rows = conn.execute(_RESUME_TENANTS, (now, shard[1], shard[0])).fetchall()
    return [TenantId(kind, ident) for kind, ident in rows]


def _has_pending(conn: sqlite3.Connection, tenant: TenantId, key: str) -> bool:
    return conn.execute(_EVENT_HAS, (tenant.kind, tenant.id, key)).fetchone() is not None


def _pending_count(conn: sqlite3.Connection, tenant: TenantId) -> int:
    return int(conn.execute(_EVENT_COUNT, (tenant.kind, tenant.id)).fetchone()[0])


def _remove_scheduled(conn: sqlite3.Connection, event_id: int) -> bool:
    return conn.execute(_EVENT_REMOVE, (event_id,)).rowcount > 0


def _retry_scheduled(conn: sqlite3.Connection, event_id: int, due_at: float) -> bool:
    return conn.execute(_EVENT_RETRY, (due_at, event_id)).rowcount > 0


# -- runs --------------------------------------------------------------------------------------
class SqliteRunStore(_Component, RunStore):
    __slots__ = ()

    async def commit_run(
        self, tenant: TenantId, effects: RunEffects, *, now: float, limits: RunLimits,
    ) -> RunCommit:
        if effects.empty:
            return RunCommit()
        return await self._writer.transact(_commit_run, tenant, effects, now, limits)

    async def outbox(self, shard: Shard, *, limit: int, after: int = 0) -> list[OutboxEvent]:
        return await self._reader.run(_outbox, shard, limit, after)

    async def delivered(self, outbox_id: int) -> bool:
        return await self._writer.transact(_outbox_delete, outbox_id)


def _commit_run(
    conn: sqlite3.Connection, tenant: TenantId, effects: RunEffects, now: float,
    limits: RunLimits,
) -> RunCommit:
    """Inside the writer's BEGIN IMMEDIATE: a limit error here rolls all of it back."""
    if limits.max_emits is not None:
        check_emits(len(effects.emits), limits.max_emits)
    results = _kv_apply(conn, tenant, effects.writes, now, limits.max_keys) \
        if effects.writes else []
    scheduled: list[ScheduledEvent] = []
    for op in effects.events:
        if isinstance(op, RunCancel):
            _cancel(conn, tenant, op.key)
            continue
        data = dumps_json(op.data)
        event_id = _schedule(conn, tenant, op.key, op.name, data, op.due_at,
                             limits.max_pending, now)
        scheduled.append(ScheduledEvent(event_id, tenant, op.key, op.name, op.data, op.due_at,
                                        0, now))
    outbox: list[OutboxEvent] = []
    for emit in effects.emits:
        cursor = conn.execute(_OUTBOX_INSERT, (
            tenant.kind, tenant.id, emit.name, dumps_json(emit.data), emit.author,
            emit.event_id, now))
        assert cursor.lastrowid is not None
        outbox.append(OutboxEvent(cursor.lastrowid, tenant, emit.name, emit.data, emit.author,
                                  emit.event_id, now))
    return RunCommit(tuple(results), tuple(scheduled), tuple(outbox))


def _outbox(
    conn: sqlite3.Connection, shard: Shard, limit: int, after: int,
) -> list[OutboxEvent]:
    rows = conn.execute(_OUTBOX_SHARD, (after, shard[1], shard[0], limit)).fetchall()
    return [outbox_event(row) for row in rows]


def _outbox_delete(conn: sqlite3.Connection, outbox_id: int) -> bool:
    return conn.execute(_OUTBOX_DELETE, (outbox_id,)).rowcount > 0
