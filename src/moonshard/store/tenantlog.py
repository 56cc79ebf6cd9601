"""The durable tenant log: the interface both stores implement, and its values.

Every ``print``, ``ctx.log`` and handler error of a tenant is one line here. Lines have
increasing ids (a follower resumes after the last id it saw), are kept per tenant up to a
number of lines and a number of days, and survive restarts.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Collection, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moonshard.tenants import TenantId

__all__ = ["LEVELS", "LogQuery", "NewLogLine", "StoredLogLine", "TenantLogStore", "levels_from"]

# By severity: a query for a level gets that level and the ones after it.
LEVELS = ("debug", "info", "warn", "error")
_RANK = MappingProxyType({level: rank for rank, level in enumerate(LEVELS)})


def levels_from(level: str) -> tuple[str, ...]:
    """The levels at ``level`` or more severe; ValueError for an unknown level."""
    if level not in _RANK:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LEVELS)}")
    return LEVELS[_RANK[level]:]


@dataclasses.dataclass(frozen=True, slots=True)
class NewLogLine:
    """A line to store."""

    tenant: TenantId
    ts: float
    level: str
    template: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class StoredLogLine:
    """A stored line: ``id`` orders a tenant's lines (and all lines) by arrival."""

    id: int
    ts: float
    level: str
    template: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {"ts": self.ts, "level": self.level, "template": self.template,
                "message": self.message}


@dataclasses.dataclass(frozen=True, slots=True)
class LogQuery:
    """Which lines of a tenant: every filter is optional; ``levels`` None means all."""

    levels: Collection[str] | None = None
    template: str | None = None
    since: float | None = None

    def matches(self, line: StoredLogLine) -> bool:
        return ((self.levels is None or line.level in self.levels)
                and (self.template is None or line.template == self.template)
                and (self.since is None or line.ts >= self.since))


class TenantLogStore(abc.ABC):
    """Stored tenant log lines."""

    @abc.abstractmethod
    async def append(self, lines: Sequence[NewLogLine], *, keep_lines: int) -> list[int]:
        """Stores ``lines`` in one transaction, in order, and returns their ids; then keeps
        only the last ``keep_lines`` lines of each tenant written to."""

    @abc.abstractmethod
    async def recent(self, tenant: TenantId, query: LogQuery, limit: int) -> list[StoredLogLine]:
        """The last ``limit`` lines of the tenant that match, oldest first."""

    @abc.abstractmethod
    async def forget_before(self, ts: float) -> int:
        """Removes every line older than ``ts`` (the days of retention); how many."""
