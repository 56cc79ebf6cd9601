"""The PostgreSQL implementation of the durable tenant log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from moonshard.store.tenantlog import LogQuery, NewLogLine, StoredLogLine, TenantLogStore

if TYPE_CHECKING:
    import asyncpg

    from moonshard.tenants import TenantId

__all__ = ["PostgresTenantLogStore"]

# One statement for a whole batch; identity values follow the order of the rows.
_INSERT = (
    "INSERT INTO tenant_logs (tenant_kind, tenant_id, ts, level, template, message)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::text[],"
    " $6::text[]) RETURNING id")
_TRIM = (
    "DELETE FROM tenant_logs WHERE tenant_kind = $1 AND tenant_id = $2 AND id <= ("
    "SELECT id FROM tenant_logs WHERE tenant_kind = $1 AND tenant_id = $2"
    " ORDER BY id DESC LIMIT 1 OFFSET $3)")
_FORGET = "DELETE FROM tenant_logs WHERE ts < $1"


class PostgresTenantLogStore(TenantLogStore):
    __slots__ = ("_pool",)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(self, lines: Sequence[NewLogLine], *, keep_lines: int) -> list[int]:
        if not lines:
            return []
        columns = (
            [line.tenant.kind for line in lines], [line.tenant.id for line in lines],
            [line.ts for line in lines], [line.level for line in lines],
            [line.template for line in lines],
            # PostgreSQL text cannot hold NUL: a template's print may.
            [line.message.replace("\x00", "\ufffd") for line in lines])
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_INSERT, *columns)
            for tenant in {line.tenant for line in lines}:
                await conn.execute(_TRIM, tenant.kind, tenant.id, keep_lines)
        return sorted(int(row[0]) for row in rows)

    async def recent(self, tenant: TenantId, query: LogQuery, limit: int) -> list[StoredLogLine]:
        if limit <= 0:
            return []
        where = ["tenant_kind = $1", "tenant_id = $2"]
        params: list[object] = [tenant.kind, tenant.id]
        if query.levels is not None:
            params.append(sorted(query.levels))
            where.append(f"level = ANY(${len(params)}::text[])")
        if query.template is not None:
            params.append(query.template)
            where.append(f"template = ${len(params)}")
        if query.since is not None:
            params.append(query.since)
            where.append(f"ts >= ${len(params)}")
        params.append(limit)
        rows = await self._pool.fetch(
            "SELECT id, ts, level, template, message FROM tenant_logs WHERE "
            + " AND ".join(where) + f" ORDER BY id DESC LIMIT ${len(params)}", *params)
        return [StoredLogLine(int(row[0]), float(row[1]), row[2], row[3], row[4])
                for row in reversed(rows)]

    async def forget_before(self, ts: float) -> int:
        status = await self._pool.execute(_FORGET, ts)
        return int(status.split()[-1])
