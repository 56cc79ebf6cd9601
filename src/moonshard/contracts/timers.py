"""Timers as the worker, its timer service and its callers name them.

A ``TimerRef`` is one pending timer held in memory: a key's expiry or a scheduled event. The
stored truth is in the store (``kv.expires_at``, ``scheduled_events``); a ref only says where
to look, and a ref whose stored row changed since is dropped when it fires.
"""

from __future__ import annotations

import dataclasses

from moonshard.tenants import TenantId

__all__ = ["CURSOR_START", "Cursor", "TimerRef"]

Cursor = tuple[float, str, str, str, str]
"""(due, tenant kind, tenant id, scope, key): the order timers are paged in."""

CURSOR_START: Cursor = (float("-inf"), "", "", "", "")


@dataclasses.dataclass(frozen=True, slots=True)
class TimerRef:
    """One pending timer: a key's expiry (``kind="expiry"``) or a scheduled event.

    For a scheduled event ``key`` is its id as text and ``version`` its id; for an expiry,
    ``version`` is the key's version when read, so a key changed since is left alone.
    """

    kind: str
    due: float
    tenant: TenantId
    scope: str
    key: str
    version: int
    attempt: int = 1

    @property
    def cursor(self) -> Cursor:
        if self.kind == "scheduled":
            # Scheduled events page by (due, id): the padded id sorts as the number does.
            return (self.due, "", "", "", f"{self.version:020d}")
        return (self.due, self.tenant.kind, self.tenant.id, self.scope, self.key)

    @property
    def identity(self) -> tuple[str, TenantId, str, str, int]:
        return (self.kind, self.tenant, self.scope, self.key, self.version)
