"""The persistence contract: small interfaces that nothing above the store bypasses.

Implementations (``moonshard.store.sqlite``, ``moonshard.store.postgres``) share one schema
and one set of versioned migrations. Times are unix seconds (float). Nothing outside this
package writes SQL.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from moonshard.values import JsonValue

if TYPE_CHECKING:
    from moonshard.templates import Template, TemplateSet
    from moonshard.tenants import TenantId

__all__ = [
    "KVDelete",
    "KVExpire",
    "KVIncr",
    "KVRecord",
    "KVSet",
    "KVStore",
    "KVWrite",
    "Store",
    "TemplateStore",
]


@dataclasses.dataclass(frozen=True, slots=True)
class KVRecord:
    """One key of a tenant's store, as TEMPLATES.md's ``ctx.kv.record`` gives it."""

    key: str
    scope: str
    value: JsonValue
    version: int
    created_at: float
    updated_at: float
    expires_at: float | None = None
    resume: bool = False

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "key": self.key, "scope": self.scope, "value": self.value, "version": self.version,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "expires_at": self.expires_at, "resume": self.resume,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class KVSet:
    scope: str
    key: str
    value: JsonValue
    expires_at: float | None = None
    resume: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class KVDelete:
    scope: str
    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class KVIncr:
    scope: str
    key: str
    by: int | float = 1


@dataclasses.dataclass(frozen=True, slots=True)
class KVExpire:
    scope: str
    key: str
    expires_at: float | None


KVWrite = KVSet | KVDelete | KVIncr | KVExpire


class KVStore(abc.ABC):
    """Committed key-value state. Reads never return a key whose ``expires_at`` <= ``now``."""

    @abc.abstractmethod
    async def get(self, tenant: TenantId, scope: str, key: str, *, now: float) -> KVRecord | None:
        ...

    @abc.abstractmethod
    async def find(
        self, tenant: TenantId, scope: str, prefix: str, *, after: str | None, limit: int,
        now: float,
    ) -> list[KVRecord]:
        """Live records whose key starts with ``prefix`` and sorts after ``after``, by key."""

    @abc.abstractmethod
    async def count(self, tenant: TenantId, scope: str | None, *, now: float) -> int:
        """Live keys in ``scope``, or in every scope of the tenant when ``scope`` is None."""

    @abc.abstractmethod
    async def apply(
        self, tenant: TenantId, writes: Sequence[KVWrite], *, now: float,
    ) -> list[KVRecord | bool | None]:
        """Applies ``writes`` in one transaction, all or nothing.

        Each result is the new record (set, incr, expire of a live key), True/False (delete:
        whether a live key existed), or None (expire of a missing key).
        """


class TemplateStore(abc.ABC):
    """A tenant's templates as immutable, versioned sets."""

    @abc.abstractmethod
    async def load_set(self, tenant: TenantId) -> TemplateSet:
        """The current set; version 0 and no templates for a tenant never seen."""

    @abc.abstractmethod
    async def put(self, tenant: TenantId, template: Template) -> TemplateSet:
        """Adds or replaces one template; bumps the set version in the same transaction."""

    @abc.abstractmethod
    async def delete(self, tenant: TenantId, name: str) -> TemplateSet | None:
        """Removes one template and bumps the version; None when it did not exist."""


class Store(abc.ABC):
    """Everything persistent. Open with ``moonshard.store.open_store(database_url)``."""

    kv: KVStore
    templates: TemplateStore

    @abc.abstractmethod
    async def close(self) -> None:
        ...
