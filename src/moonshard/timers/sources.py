"""Where a worker's timer wheels read from: its shard of the stored expiries and events."""

from __future__ import annotations

from moonshard.contracts.timers import Cursor, TimerRef
from moonshard.store.api import Shard, TimerStore
from moonshard.timers.wheel import TimerSource

__all__ = ["stored_timers"]


def stored_timers(timers: TimerStore, shard: Shard) -> dict[str, TimerSource]:
    """A page source per timer kind, over the tenants of ``shard``."""

    async def expiries(after: Cursor, end: float, limit: int) -> list[TimerRef]:
        rows = await timers.expiries_after(after, end, limit, shard=shard)
        return [TimerRef("expiry", record.expires_at or 0.0, tenant, record.scope,
                         record.key, record.version) for tenant, record in rows]

    async def scheduled(after: Cursor, end: float, limit: int) -> list[TimerRef]:
        last_id = int(after[4]) if after[4] else 0
        events = await timers.scheduled_after((after[0], last_id), end, limit, shard=shard)
        return [TimerRef("scheduled", event.due_at, event.tenant, "", str(event.id),
                         event.id) for event in events]

    return {"expiry": expiries, "scheduled": scheduled}
