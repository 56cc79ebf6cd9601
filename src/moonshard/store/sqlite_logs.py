"""The SQLite implementation of the durable tenant log."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from moonshard.store.tenantlog import LogQuery, NewLogLine, StoredLogLine, TenantLogStore

if TYPE_CHECKING:
    from moonshard.store._sqlitethread import ConnectionThreads
    from moonshard.tenants import TenantId

__all__ = ["SqliteTenantLogStore"]

_TENANT = "tenant_kind = ? AND tenant_id = ?"
_INSERT = (
    "INSERT INTO tenant_logs (tenant_kind, tenant_id, ts, level, template, message)"
    " VALUES (?, ?, ?, ?, ?, ?) RETURNING id")
# The id of the newest line past the ones kept: everything up to it goes.
_TRIM = (
    f"DELETE FROM tenant_logs WHERE {_TENANT} AND id <= (SELECT id FROM tenant_logs"
    f" WHERE {_TENANT} ORDER BY id DESC LIMIT 1 OFFSET ?)")
_FORGET = "DELETE FROM tenant_logs WHERE ts < ?"


class SqliteTenantLogStore(TenantLogStore):
    __slots__ = ("_reader", "_writer")

    def __init__(self, writer: ConnectionThreads, reader: ConnectionThreads) -> None:
        self._writer = writer
        self._reader = reader

    async def append(self, lines: Sequence[NewLogLine], *, keep_lines: int) -> list[int]:
        if not lines:
            return []
        return await self._writer.transact(_append, list(lines), keep_lines)

    async def recent(self, tenant: TenantId, query: LogQuery, limit: int) -> list[StoredLogLine]:
        if limit <= 0:
            return []
        return await self._reader.run(_recent, tenant, query, limit)

    async def forget_before(self, ts: float) -> int:
        return await self._writer.transact(_forget, ts)


def _append(conn: sqlite3.Connection, lines: list[NewLogLine], keep_lines: int) -> list[int]:
    ids = [int(conn.execute(_INSERT, (line.tenant.kind, line.tenant.id, line.ts, line.level,
                                      line.template, line.message)).fetchone()[0])
           for line in lines]
    for tenant in {line.tenant for line in lines}:
        conn.execute(_TRIM, (tenant.kind, tenant.id, tenant.kind, tenant.id, keep_lines))
    return ids


def _recent(conn: sqlite3.Connection, tenant: TenantId, query: LogQuery,
            limit: int) -> list[StoredLogLine]:
    sql, params = _select(tenant, query)
    rows = conn.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    return [StoredLogLine(int(row[0]), float(row[1]), row[2], row[3], row[4])
            for row in reversed(rows)]


def _select(tenant: TenantId, query: LogQuery) -> tuple[str, list[object]]:
    where = [_TENANT]
    params: list[object] = [tenant.kind, tenant.id]
    if query.levels is not None:
        levels = sorted(query.levels)
        where.append(f"level IN ({', '.join('?' for _ in levels)})")
        params.extend(levels)
    if query.template is not None:
        where.append("template = ?")
        params.append(query.template)
    if query.since is not None:
        where.append("ts >= ?")
        params.append(query.since)
    return ("SELECT id, ts, level, template, message FROM tenant_logs WHERE "
            + " AND ".join(where), params)


def _forget(conn: sqlite3.Connection, ts: float) -> int:
    return conn.execute(_FORGET, (ts,)).rowcount
