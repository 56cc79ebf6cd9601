"""The persistence contract: small interfaces that nothing above the store bypasses.

Implementations (``moonshard.store.sqlite``, ``moonshard.store.postgres``) share one schema
and one set of versioned migrations. Times are unix seconds (float). Nothing outside this
package writes SQL.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from moonshard.values import JsonValue

if TYPE_CHECKING:
    from moonshard.store.tenantlog import TenantLogStore
    from moonshard.templates import Template, TemplateSet
    from moonshard.tenants import TenantId

__all__ = [
    "ADMIN_LABEL",
    "TEMPLATE_VERSIONS_KEPT",
    "TOKEN_USE_RESOLUTION",
    "ExpiryCursor",
    "KVDelete",
    "KVExpire",
    "KVIncr",
    "KVRecord",
    "KVResult",
    "KVSet",
    "KVStore",
    "KVWrite",
    "OutboxEvent",
    "PointReads",
    "PointReadsClosed",
    "RunCancel",
    "RunCommit",
    "RunEffects",
    "RunEmit",
    "RunLimits",
    "RunSchedule",
    "RunStore",
    "ScheduledCursor",
    "ScheduledEvent",
    "Shard",
    "Store",
    "TemplateStore",
    "TemplateVersion",
    "TimerStore",
    "TokenInfo",
    "TokenStore",
    "TopPlace",
    "VersionedKey",
    "expiry_cursor",
    "hash_token",
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

    def is_live(self, now: float) -> bool:
        """False once the key has expired (``expires_at <= now``)."""
        return self.expires_at is None or self.expires_at > now


# Each write may carry ``at``, the time the handler made it: the record's created_at and
# updated_at then say when the template wrote, not when its run committed. Expiry is judged
# at commit time either way.


@dataclasses.dataclass(frozen=True, slots=True)
class KVSet:
    scope: str
    key: str
    value: JsonValue
    expires_at: float | None = None
    resume: bool = False
    at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class KVDelete:
    scope: str
    key: str
    at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class KVIncr:
    scope: str
    key: str
    by: int | float = 1
    at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class KVExpire:
    scope: str
    key: str
    expires_at: float | None
    at: float | None = None


TopPlace = tuple[float, str]
"""(number, key): a place in a leaderboard's order, highest number first, then by key."""

KVWrite = KVSet | KVDelete | KVIncr | KVExpire
@dataclasses.dataclass(frozen=True, slots=True)
class VersionedKey:
    """A key as a timer read it: deleted only if it still has this version (and expiry)."""

    scope: str
    key: str
    version: int
    expires_at: float | None = None


KVResult = KVRecord | bool | None
"""What one write gives: see ``KVStore.apply``."""


class PointReads(abc.ABC):
    """Point reads of committed kv rows answered on the calling thread, with no hand-off.

    Each thread that reads gets a connection of its own. Each read is its own snapshot: it sees
    every transaction committed before it started.
    """

    @abc.abstractmethod
    def get(self, tenant: TenantId, scope: str, key: str, *, now: float) -> KVRecord | None:
        """``KVStore.get``, on this thread. Raises ``PointReadsClosed`` once the store is
        closed, or the database's own error (the caller then takes the awaited path)."""

    @abc.abstractmethod
    def load_rows(self, tenant: TenantId, keys: Sequence[tuple[str, str]],
                  ) -> tuple[dict[tuple[str, str], KVRecord], int]:
        """``KVStore.load_rows``, on this thread (raises as ``get`` does)."""

    @abc.abstractmethod
    def count(self, tenant: TenantId, scope: str | None, *, now: float) -> int:
        """``KVStore.count``, on this thread (raises as ``get`` does)."""

    @property
    @abc.abstractmethod
    def served(self) -> int:
        """Reads answered so far (a statistic, for tests and metrics)."""


class PointReadsClosed(Exception):
    """The store was closed: reads on the calling thread are over."""


class KVStore(abc.ABC):
    """Committed key-value state. Reads never return a key whose ``expires_at`` <= ``now``.

    Writes treat an expired key as absent (a ``set`` starts a fresh ``created_at``, an ``incr``
    starts from 0); every write of a key adds one to its ``version``, including the write that
    revives an expired key, so a version is never reused for one key while its row exists.
    """

    @abc.abstractmethod
    async def get(self, tenant: TenantId, scope: str, key: str, *, now: float) -> KVRecord | None:
        ...

    def point_reads(self) -> PointReads | None:
        """Reads answered at once on the calling thread, or None when this store has none
        (PostgreSQL: every read is a round trip, awaited on the event loop)."""
        return None

    @abc.abstractmethod
    async def load_rows(
        self, tenant: TenantId, keys: Sequence[tuple[str, str]],
    ) -> tuple[dict[tuple[str, str], KVRecord], int]:
        """The stored rows of ``keys`` ((scope, key) pairs) even when expired, by pair, and
        how many rows the tenant stores, read together.

        For writers that predict what ``apply`` will do (the run overlay of ``ctx.kv``): the
        row count counts expired rows not deleted yet, so it bounds the live keys from above.
        """

    async def load_row(
        self, tenant: TenantId, scope: str, key: str,
    ) -> tuple[KVRecord | None, int]:
        """``load_rows`` for one key."""
        rows, stored = await self.load_rows(tenant, ((scope, key),))
        return rows.get((scope, key)), stored

    @abc.abstractmethod
    async def find(
        self, tenant: TenantId, scope: str, prefix: str, *, after: str | None, limit: int,
        now: float,
    ) -> list[KVRecord]:
        """Live records whose key starts with ``prefix`` and sorts after ``after``, by key.

        Keys sort by code point (the byte order of their UTF-8), in both stores.
        """

    @abc.abstractmethod
    async def count(self, tenant: TenantId, scope: str | None, *, now: float) -> int:
        """Live keys in ``scope``, or in every scope of the tenant when ``scope`` is None."""

    @abc.abstractmethod
    async def top(
        self, tenant: TenantId, scope: str, *, after: TopPlace | None, limit: int, now: float,
    ) -> list[KVRecord]:
        """Live records of ``scope`` whose values rank (``kvlogic.rank_number``), highest
        number first and by key among equal numbers, the first ``limit`` after ``after``.

        Read from the ``kv_top`` index (``num_value`` descending, key): a page costs its own
        rows, however many keys the scope holds.
        """

    @abc.abstractmethod
    async def ahead(self, tenant: TenantId, scope: str, place: TopPlace, *, now: float) -> int:
        """How many live ranking records of ``scope`` sort before ``place`` in ``top``'s
        order (a key's rank is that plus one)."""

    @abc.abstractmethod
    async def apply(
        self, tenant: TenantId, writes: Sequence[KVWrite], *, now: float,
        max_keys: int | None = None,
    ) -> list[KVResult]:
        """Applies ``writes`` in one transaction, all or nothing.

        Each result is the new record (set, incr, expire of a live key), True/False (delete:
        whether a live key existed), or None (expire of a missing key). An ``incr`` adds to
        the value as stored when the transaction runs, so concurrent increments are never
        lost. With ``max_keys``, raises ``LimitExceeded("kv.keys")`` (and writes nothing) when
        the writes would leave the tenant with more live keys than that and more than before.
        """


TEMPLATE_VERSIONS_KEPT = 10
"""How many saves of each template are kept (the current one included) for rollback."""


@dataclasses.dataclass(frozen=True, slots=True)
class TemplateVersion:
    """One kept save of a template: its version, subscriptions and when it was saved."""

    version: int
    events: tuple[str, ...]
    updated_at: float

    def to_json(self) -> dict[str, JsonValue]:
        return {"version": self.version, "events": list(self.events),
                "updated_at": self.updated_at}


class TemplateStore(abc.ABC):
    """A tenant's templates as immutable, versioned sets.

    A template's ``version`` is the set version at which it was last written, so it is never
    reused for a tenant, even after a delete and a new put of the same name. Each put also
    keeps that save as a version of the template; the newest ``TEMPLATE_VERSIONS_KEPT`` are
    kept, older ones are pruned in the same transaction. A delete forgets them.
    """

    @abc.abstractmethod
    async def history(self, tenant: TenantId, name: str) -> list[TemplateVersion]:
        """The kept versions of template ``name``, newest (the current one) first; empty
        when the tenant has no such template."""

    @abc.abstractmethod
    async def version(self, tenant: TenantId, name: str, version: int) -> Template | None:
        """The files and subscriptions of one kept version (``paused`` False), or None."""

    @abc.abstractmethod
    async def load_set(self, tenant: TenantId) -> TemplateSet:
        """The current set; version 0 and no templates for a tenant never seen."""

    @abc.abstractmethod
    async def put(
        self, tenant: TenantId, template: Template, *, max_templates: int | None = None,
    ) -> TemplateSet:
        """Adds or replaces one template; bumps the set version in the same transaction.

        ``template.version`` and ``updated_at`` are ignored and assigned by the store. With
        ``max_templates``, adding a new template past that many raises
        ``LimitExceeded("template.count")``.
        """

    @abc.abstractmethod
    async def delete(self, tenant: TenantId, name: str) -> TemplateSet | None:
        """Removes one template and bumps the version; None when it did not exist."""

    @abc.abstractmethod
    async def tenants(self, *, after: TenantId | None, limit: int) -> list[TenantId]:
        """Tenants that ever saved a template (set version above 0), by kind then id as text,
        the first ``limit`` after ``after``."""


def hash_token(token: str) -> str:
    """How a bearer token is stored: the hex SHA-256 of its text.

    Tokens are 256-bit random values, so a plain hash (no salt, no slow KDF) cannot be
    reversed, and a lookup by hash stays one indexed query.
    """
    return hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class TokenInfo:
    """Who a bearer token speaks for: one tenant, or every tenant (``tenant`` None, admin).

    ``id`` names the token where its secret must not appear (lists, revocation);
    ``last_used_at`` is kept to the minute.
    """

    tenant: TenantId | None
    created_at: float
    id: str = ""
    label: str | None = None
    last_used_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def reaches(self, tenant: TenantId) -> bool:
        return self.tenant is None or self.tenant == tenant

    def to_json(self) -> dict[str, JsonValue]:
        return {"id": self.id, "tenant": None if self.tenant is None else str(self.tenant),
                "label": self.label, "created_at": self.created_at,
                "last_used_at": self.last_used_at}


# How stale a token's recorded last use may get before a use writes it again: a write per
# request would make every authenticated read a write.
TOKEN_USE_RESOLUTION = 60.0
ADMIN_LABEL = "admin"


class TokenStore(abc.ABC):
    """API bearer tokens. Only their hashes are stored; the text is shown once, at creation.

    There is exactly one admin token once the service has started: making or naming a new
    one (``rotate_admin``, ``ensure_admin``) ends the one before in the same transaction.
    """

    async def create(self, tenant: TenantId | None, label: str | None = None) -> str:
        """A new token for ``tenant`` (None: the admin token, replacing the old one)."""
        if tenant is None:
            return (await self.rotate_admin())[1]
        return (await self.issue(tenant, label))[1]

    @abc.abstractmethod
    async def issue(self, tenant: TenantId, label: str | None = None) -> tuple[TokenInfo, str]:
        """A new random token that reaches ``tenant`` only: its record and its text."""

    @abc.abstractmethod
    async def rotate_admin(self) -> tuple[TokenInfo, str]:
        """A new admin token; the old one stops working in the same transaction."""

    @abc.abstractmethod
    async def resolve(self, token: str) -> TokenInfo | None:
        """Who ``token`` speaks for; None when it is unknown or revoked. Records the use
        (at most once per ``TOKEN_USE_RESOLUTION`` seconds)."""

    @abc.abstractmethod
    async def ensure_admin(self, token: str) -> None:
        """Makes ``token`` (the admin token file's, or ADMIN_TOKEN) the admin token; any other
        admin token ends.

        Idempotent. Raises ``ValueError`` if that token exists for a single tenant.
        """

    @abc.abstractmethod
    async def revoke(self, token: str) -> bool:
        """Forgets ``token`` (by its text); True if it existed."""

    @abc.abstractmethod
    async def list_tokens(self) -> list[TokenInfo]:
        """Every token, the admin token first, then by creation."""

    @abc.abstractmethod
    async def revoke_id(self, token_id: str) -> TokenInfo | None:
        """Ends the tenant token of that id; its record, or None when there is none.

        Raises ``ValueError`` for the admin token's id: it is replaced, never just ended,
        so that the service always has one.
        """


ExpiryCursor = tuple[float, str, str, str, str]
"""(expires_at, tenant kind, tenant id, scope, key): the order expiries are paged in. Text
sorts by code point in both stores."""

ScheduledCursor = tuple[float, int]
"""(due_at, id): the order scheduled events are paged in."""


def expiry_cursor(tenant: TenantId, record: KVRecord) -> ExpiryCursor:
    """Where ``record`` (a key with an expiry) sits in the expiry order."""
    if record.expires_at is None:
        raise ValueError(f"key {record.key!r} has no expiry")
    return (record.expires_at, tenant.kind, tenant.id, record.scope, record.key)


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduledEvent:
    """A durable custom event of ``ctx.events.schedule``, due at ``due_at``."""

    id: int
    tenant: TenantId
    key: str | None
    name: str
    data: JsonValue
    due_at: float
    attempt: int = 0
    created_at: float = 0.0

    @property
    def cursor(self) -> ScheduledCursor:
        return (self.due_at, self.id)


Shard = tuple[int, int]
"""(index, count): the tenants whose ``(id >> 22) % count == index``."""


class TimerStore(abc.ABC):
    """What the timer service reads and changes: key expiries and scheduled events.

    Unlike ``KVStore``'s reads, the expiry queries return expired keys: that is their point.
    """

    @abc.abstractmethod
    async def due_expiries(self, before: float, limit: int) -> list[tuple[TenantId, KVRecord]]:
        """Keys with ``expires_at <= before`` across all tenants, soonest first."""

    @abc.abstractmethod
    async def expiries_after(
        self, after: ExpiryCursor, end: float, limit: int, *, shard: Shard | None = None,
    ) -> list[tuple[TenantId, KVRecord]]:
        """Keys with ``expires_at <= end`` that sort after ``after`` in ``ExpiryCursor`` order,
        in that order: pages through the timers of a window without skipping equal times.

        Start with ``(float("-inf"), "", "", "", "")``; continue from the last row's cursor.
        With ``shard``, only the tenants of that shard (a worker's own).
        """

    @abc.abstractmethod
    async def delete_if_version(
        self, tenant: TenantId, scope: str, key: str, version: int, *,
        expires_at: float | None = None,
    ) -> bool:
        """Deletes the key only if its version is still ``version`` (not changed meanwhile).

        A key deleted and created again starts over at version 1, so a timer should also pass
        the ``expires_at`` it fired for: the row must then still carry exactly that expiry.
        """

    @abc.abstractmethod
    async def delete_if_versions(
        self, tenant: TenantId, keys: Sequence[VersionedKey],
    ) -> list[bool]:
        """``delete_if_version`` for each of ``keys``, all in one transaction: one result per
        key, in order (a backlog of expiries is finished in batches, not one commit each)."""

    @abc.abstractmethod
    async def resume_records(self, tenant: TenantId, *, now: float) -> list[KVRecord]:
        """The tenant's live keys set with ``resume=true``, by scope and key."""

    @abc.abstractmethod
    async def schedule(
        self, tenant: TenantId, key: str | None, name: str, data: JsonValue, due_at: float, *,
        max_pending: int | None = None,
    ) -> int:
        """Stores a scheduled event and returns its id (ids are never reused).

        With ``key``, first removes the tenant's pending event of that key. With
        ``max_pending``, raises ``LimitExceeded("events.scheduled")`` when the tenant would
        then have more pending events than that.
        """

    @abc.abstractmethod
    async def cancel(self, tenant: TenantId, key: str) -> bool:
        """Removes the tenant's pending event of ``key``; True if there was one."""

    @abc.abstractmethod
    async def due_scheduled(self, before: float, limit: int) -> list[ScheduledEvent]:
        """Events with ``due_at <= before`` across all tenants, soonest first."""

    @abc.abstractmethod
    async def scheduled_after(
        self, after: ScheduledCursor, end: float, limit: int, *, shard: Shard | None = None,
    ) -> list[ScheduledEvent]:
        """Events with ``due_at <= end`` after ``after`` in (due_at, id) order, in that order.

        Start with ``(float("-inf"), 0)``; continue from the last event's ``cursor``.
        """

    @abc.abstractmethod
    async def get_scheduled(self, event_id: int) -> ScheduledEvent | None:
        """The pending event of that id; None once delivered, cancelled or replaced."""

    @abc.abstractmethod
    async def tenants_with_resume_keys(self, shard: Shard, *, now: float) -> list[TenantId]:
        """The shard's tenants that have live resume keys (their work continues at start)."""

    @abc.abstractmethod
    async def has_pending(self, tenant: TenantId, key: str) -> bool:
        """Whether the tenant has a pending scheduled event of ``key``."""

    @abc.abstractmethod
    async def pending_count(self, tenant: TenantId) -> int:
        ...

    @abc.abstractmethod
    async def remove_scheduled(self, event_id: int) -> bool:
        """Removes a delivered (or dead) event by id; False if it was gone or replaced."""

    @abc.abstractmethod
    async def retry_scheduled(self, event_id: int, due_at: float) -> bool:
        """Moves an event to ``due_at`` and counts one more attempt; False if it is gone."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunSchedule:
    """``ctx.events.schedule``: store an event due at ``due_at`` (replacing ``key``'s)."""

    key: str | None
    name: str
    data: JsonValue
    due_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class RunCancel:
    """``ctx.events.cancel``: remove the tenant's pending event of ``key``."""

    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class RunEmit:
    """``ctx.events.emit``: an event handed on after the commit. ``event_id`` is its
    ``event.id``, the same on every delivery."""

    name: str
    data: JsonValue
    author: str | None
    event_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class RunEffects:
    """Everything one handler run asked for, in the order it asked: committed all or nothing."""

    writes: tuple[KVWrite, ...] = ()
    events: tuple[RunSchedule | RunCancel, ...] = ()
    emits: tuple[RunEmit, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.writes or self.events or self.emits)


@dataclasses.dataclass(frozen=True, slots=True)
class RunLimits:
    """The limits ``commit_run`` checks again inside its transaction (None: not checked)."""

    max_keys: int | None = None
    max_pending: int | None = None
    max_emits: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An emitted event stored with the run that emitted it, until it is delivered."""

    id: int
    tenant: TenantId
    name: str
    data: JsonValue
    author: str | None
    event_id: str
    created_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class RunCommit:
    """What ``commit_run`` stored: one result per kv write (as ``KVStore.apply``), the
    scheduled events it created, and the outbox rows of its emitted events."""

    kv_results: tuple[KVResult, ...] = ()
    scheduled: tuple[ScheduledEvent, ...] = ()
    outbox: tuple[OutboxEvent, ...] = ()


class RunStore(abc.ABC):
    """One handler run's effects as one transaction, and the outbox of emitted events."""

    @abc.abstractmethod
    async def commit_run(
        self, tenant: TenantId, effects: RunEffects, *, now: float, limits: RunLimits,
    ) -> RunCommit:
        """Applies the kv writes, then the schedules and cancellations in order, and stores
        the emitted events in the outbox: all in one transaction, or nothing.

        Raises ``LimitExceeded`` (``kv.keys``, ``events.scheduled`` or ``events.emits``) and
        writes nothing when the run would break a limit of ``limits`` as the data stands at
        commit.
        """

    @abc.abstractmethod
    async def outbox(self, shard: Shard, *, limit: int, after: int = 0) -> list[OutboxEvent]:
        """Undelivered emitted events of the shard's tenants with an id above ``after``,
        oldest first."""

    @abc.abstractmethod
    async def delivered(self, outbox_id: int) -> bool:
        """Removes a delivered outbox row; False if it was gone already."""


class Store(abc.ABC):
    """Everything persistent. Open with ``moonshard.store.open_store(database_url)``.

    A store is used from the event loop that opened it (the PostgreSQL pool is bound to it);
    a thread with its own loop opens its own store.
    """

    kv: KVStore
    templates: TemplateStore
    tokens: TokenStore
    timers: TimerStore
    runs: RunStore
    logs: TenantLogStore

    @abc.abstractmethod
    async def close(self) -> None:
        ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
