"""``ctx.kv``: a tenant's key-value store as one handler run sees it (TEMPLATES.md).

A ``KVSession`` lives for one handler run. Its writes are buffered, and its reads see them
merged over the committed state. At the end of a handler run the runner takes them
(``take_effects``) into the run's one transaction (``RunStore.commit_run``); used on its own
(the HTTP API), ``commit`` stores them in one transaction (``KVStore.apply``) and ``rollback``
forgets them. An ``incr`` is buffered as a delta and added
to the value as stored when the commit runs, so concurrent runs never lose an increment; the
number it returns during the run is computed from what the run sees.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from moonshard.contracts.host import Capability, RunScope
from moonshard.errors import HostCallError, LimitExceeded
from moonshard.store import kvlogic
from moonshard.store.api import (
    KVDelete,
    KVExpire,
    KVIncr,
    KVRecord,
    KVResult,
    KVSet,
    KVStore,
    KVWrite,
    RunEffects,
    TopPlace,
)
from moonshard.values import JsonValue

if TYPE_CHECKING:
    from moonshard.host.ratelimit import GcraLimiter
    from moonshard.limits import Limits
    from moonshard.tenants import TenantId

__all__ = [
    "DEFAULT_SCOPE",
    "FIND_LIMIT",
    "MAX_BATCH_OPS",
    "MAX_PENDING_BYTES",
    "SCOPE_BYTES",
    "TOP_LIMIT",
    "TOP_MAX",
    "KVSession",
    "KVSizeError",
]

DEFAULT_SCOPE = "default"
SCOPE_BYTES = 64
FIND_LIMIT = 100
# ctx.kv.top: a page of 10 by default, at most 100.
TOP_LIMIT = 10
TOP_MAX = 100
# A batch is one host call; bounding it keeps one call's work and rate-limit cost bounded.
MAX_BATCH_OPS = 100
# Buffered writes live in memory until the run ends; this bounds what one run can hold.
MAX_PENDING_BYTES = 32 * 1024 * 1024
# Bookkeeping counted per buffered write besides its value, so many tiny writes count too.
_WRITE_OVERHEAD = 128
# JSON nesting deeper than this is refused (the sandbox's value bridge has the same bound).
_MAX_DEPTH = 100

_SCOPE_ONLY = frozenset({"scope"})
# The calls answer_now can answer: point reads of one key.
_READ_NOW = frozenset({"get", "record"})
# Writes answered on the calling thread when the rows they need can be read there.
_WRITE_NOW = frozenset({"set", "delete", "incr", "expire"})
_SET_OPTIONS = frozenset({"scope", "ttl", "expires_at", "resume"})
_FIND_OPTIONS = frozenset({"scope", "limit", "after"})


class KVSizeError(LimitExceeded, HostCallError):
    """A key or value over its size limit: a limit (named, for metrics and HTTP 413) that is
    also a refused call."""


class _Pending:
    """A key the run has touched: its committed row when first loaded, and its row now."""

    __slots__ = ("base", "dirty", "row")

    def __init__(self, base: KVRecord | None) -> None:
        self.base = base
        self.row = base
        # False until the run writes the key: until then reads go to the store, not to `row`.
        self.dirty = False


class KVSession(Capability, RunScope):
    """The ``ctx.kv`` capability of one handler run of one tenant."""

    __slots__ = ("_clock", "_closed", "_limiter", "_limits", "_max_pending_bytes",
                 "_pending", "_pending_bytes", "_points", "_store", "_stored_rows", "_tenant",
                 "_writes")

    def __init__(
        self, store: KVStore, tenant: TenantId, limits: Limits, rate_limiter: GcraLimiter,
        clock: Callable[[], float] = time.time, *,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._store = store
        # Committed rows read on the calling thread (SQLite), for answer_now; None: none.
        self._points = store.point_reads()
        self._tenant = tenant
        self._limits = limits
        self._limiter = rate_limiter
        self._clock = clock
        self._max_pending_bytes = max_pending_bytes
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._writes: list[KVWrite] = []
        self._pending_bytes = 0
        # Rows the tenant stored when the run first loaded a key: bounds its live keys.
        self._stored_rows: int | None = None
        self._closed = False

    @property
    def pending_writes(self) -> int:
        """How many writes the run has buffered (for tests and metrics)."""
        return len(self._writes)

    # -- the host call ---------------------------------------------------------------------
    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        def arg(index: int) -> JsonValue:
            return args[index] if index < len(args) else None

        match op:
            case "get":
                return await self.get(arg(0), arg(1))
            case "record":
                return await self.record(arg(0), arg(1))
            case "set":
                return await self.set(arg(0), arg(1), arg(2))
            case "delete":
                return await self.delete(arg(0), arg(1))
            case "incr":
                return await self.incr(arg(0), arg(1), arg(2))
            case "expire":
                return await self.expire(arg(0), arg(1), arg(2))
            case "find":
                return await self.find(arg(0), arg(1))
            case "count":
                return await self.count(arg(0))
            case "batch":
                return await self.batch(arg(0))
            case "top":
                return await self.top(arg(0))
            case "rank":
                return await self.rank(arg(0), arg(1))
        raise HostCallError(
            f"ctx.kv has no operation {op!r} (it has get, record, set, delete, incr, expire, "
            "find, count, top, rank, batch)")

    def answers_now(self, op: str) -> bool:
        return (op in _READ_NOW or op in _WRITE_NOW) and self._points is not None

    def answer_now(self, op: str, args: Sequence[JsonValue]) -> tuple[JsonValue] | None:
        """``get`` and ``record`` on the calling thread: from the run's own writes, or the
        store's point reads (SQLite). The same checks, rate cost, errors and answer as
        ``call``."""
        if not self.answers_now(op):
            return None
        if op in _WRITE_NOW:
            return self._write_now(op, args)
        key = args[0] if args else None
        opts = args[1] if len(args) > 1 else None
        try:
            options = _options(opts, _SCOPE_ONLY)
            scope, checked_key = _scope(options), _key(key, self._limits)
        except (HostCallError, LimitExceeded):
            # ``get`` charges the call before it checks it: a refused call costs its token,
            # and a closed session or an empty bucket is what the template hears first.
            self._begin(1)
            raise
        found = self._read_now(scope, checked_key)
        if found is None:
            return None  # nothing charged, nothing changed: ``call`` answers it
        self._begin(1)
        (record,) = found
        if record is None:
            return (None,)
        return (record.value if op == "get" else record.to_json(),)

    def _read_now(self, scope: str, key: str) -> tuple[KVRecord | None] | None:
        """``_read`` without waiting: ``(record,)``, or None when only the store's awaited
        read can answer."""
        entry = self._pending.get((scope, key))
        now = self._clock()
        if entry is not None and entry.dirty:
            row = entry.row
            return (row if row is not None and row.is_live(now) else None,)
        if self._points is None:
            return None
        try:
            return (self._points.get(self._tenant, scope, key, now=now),)
        except Exception:  # closed, or the database failed: the awaited read will say so
            return None

    def _write_now(self, op: str, args: Sequence[JsonValue]) -> tuple[JsonValue] | None:
        """``set``, ``delete``, ``incr`` and ``expire`` on the calling thread, with the rows
        they need read there: the same checks, rate cost, errors and answer as ``call``, in
        the same order (the rate is charged before anything but a read is judged). None,
        having charged and changed nothing, when only the awaited reads can answer."""

        def arg(index: int) -> JsonValue:
            return args[index] if index < len(args) else None

        try:
            write, size = self._parse_write(op, arg)
        except (HostCallError, LimitExceeded):
            self._begin(1)  # a refused call costs its token, as in ``call``
            raise
        entries = self._entries_now([write])
        if entries is None:
            return None
        now = self._clock()
        staged, results, delta, writes = self._stage([write], entries, now)
        committed: int | None = None
        if delta > 0 and not self._within_key_bound(delta, now):
            committed = self._count_now(now)
            if committed is None:
                return None
        self._begin(1)
        pending_bytes = self._check_pending_bytes(size, 1)
        if committed is not None:
            kvlogic.check_key_limit(delta, self._limits.keys_per_tenant,
                                    committed + self._overlay_live(now))
        self._keep(staged, entries, writes, pending_bytes)
        return (_result_json(results[0], incr=op == "incr"),)

    def _parse_write(self, op: str, arg: Callable[[int], JsonValue]) -> tuple[KVWrite, int]:
        match op:
            case "set":
                return self._parse_set(arg(0), arg(1), arg(2))
            case "delete":
                return self._parse_delete(arg(0), arg(1)), 0
            case "incr":
                return self._parse_incr(arg(0), arg(1), arg(2)), 0
        return self._parse_expire(arg(0), arg(1), arg(2)), 0

    def _entries_now(self, writes: list[KVWrite]) -> dict[tuple[str, str], _Pending] | None:
        """``_load`` on the calling thread; None when the point reads cannot answer."""
        missing = [row_key for row_key in dict.fromkeys((w.scope, w.key) for w in writes)
                   if row_key not in self._pending]
        if missing:
            if self._points is None:
                return None
            try:
                rows, stored = self._points.load_rows(self._tenant, missing)
            except Exception:  # closed, or the database failed: the awaited read will say so
                return None
            self._add_loaded(missing, rows, stored)
        return {(w.scope, w.key): self._pending[w.scope, w.key] for w in writes}

    def _count_now(self, now: float) -> int | None:
        if self._points is None:
            return None
        try:
            return self._points.count(self._tenant, None, now=now)
        except Exception:
            return None

    # -- operations (arguments as the template gave them, unchecked) -----------------------
    async def get(self, key: JsonValue, opts: JsonValue = None) -> JsonValue:
        self._begin(1)
        options = _options(opts, _SCOPE_ONLY)
        record = await self._read(_scope(options), _key(key, self._limits))
        return None if record is None else record.value

    async def record(self, key: JsonValue, opts: JsonValue = None) -> JsonValue:
        self._begin(1)
        options = _options(opts, _SCOPE_ONLY)
        record = await self._read(_scope(options), _key(key, self._limits))
        return None if record is None else record.to_json()

    async def set(self, key: JsonValue, value: JsonValue, opts: JsonValue = None) -> JsonValue:
        self._begin(1)
        write, size = self._parse_set(key, value, opts)
        (result,) = await self._write([write], size)
        return _result_json(result)

    async def delete(self, key: JsonValue, opts: JsonValue = None) -> JsonValue:
        self._begin(1)
        write = self._parse_delete(key, opts)
        (result,) = await self._write([write], 0)
        return _result_json(result)

    async def incr(self, key: JsonValue, by: JsonValue = None, opts: JsonValue = None) -> JsonValue:
        self._begin(1)
        write = self._parse_incr(key, by, opts)
        (result,) = await self._write([write], 0)
        return _result_json(result, incr=True)

    async def expire(
        self, key: JsonValue, ttl: JsonValue = None, opts: JsonValue = None,
    ) -> JsonValue:
        """Sets (``ttl`` seconds from now) or clears (nil) the expiry of a live key: gives the
        record, or nil when the key does not exist."""
        self._begin(1)
        write = self._parse_expire(key, ttl, opts)
        (result,) = await self._write([write], 0)
        return _result_json(result)

    async def find(self, prefix: JsonValue, opts: JsonValue = None) -> JsonValue:
        self._begin(1)
        options = _options(opts, _FIND_OPTIONS)
        scope = _scope(options)
        if prefix is None:
            prefix = ""
        if not isinstance(prefix, str):
            raise HostCallError(f"prefix must be a string, got a {kvlogic.lua_type_name(prefix)}")
        after = options.get("after")
        if after is not None and not isinstance(after, str):
            raise HostCallError(
                f"opts.after must be a key (a string), got a {kvlogic.lua_type_name(after)}")
        limit = _find_limit(options.get("limit"))
        records = await self._find(scope, prefix, after, limit)
        return [record.to_json() for record in records]

    async def count(self, opts: JsonValue = None) -> JsonValue:
        self._begin(1)
        scope = _scope(_options(opts, _SCOPE_ONLY))
        now = self._clock()
        committed = await self._store.count(self._tenant, scope, now=now)
        return committed + sum(
            _live(entry.row, now) - _live(entry.base, now)
            for (entry_scope, _), entry in self._pending.items()
            if entry.dirty and entry_scope == scope)

    async def batch(self, ops: JsonValue) -> JsonValue:
        """Runs set/delete/incr ops all or nothing: one failing op leaves none of them done."""
        if ops is None or ops == {}:
            ops = []
        if not isinstance(ops, list):
            raise HostCallError(
                f"batch takes a list of ops, got a {kvlogic.lua_type_name(ops)}")
        if len(ops) > MAX_BATCH_OPS:
            raise HostCallError(f"a batch may hold at most {MAX_BATCH_OPS} ops, got {len(ops)}")
        self._begin(max(1, len(ops)))
        writes: list[KVWrite] = []
        size = 0
        for number, op in enumerate(ops, start=1):
            try:
                write, op_size = self._parse_batch_op(op)
            except KVSizeError as error:
                raise KVSizeError(error.limit, f"op #{number}: {error}") from None
            except HostCallError as error:
                raise HostCallError(f"op #{number}: {error}") from None
            writes.append(write)
            size += op_size
        results = await self._write(writes, size)
        return [_result_json(result, incr=isinstance(write, KVIncr))
                for write, result in zip(writes, results, strict=True)]

    # -- leaderboards ----------------------------------------------------------------------
    async def top(self, opts: JsonValue = None) -> JsonValue:
        """The records of the scope whose values are numbers, highest first, then by key;
        ``opts.after`` (a key on the leaderboard) starts the page after that key."""
        self._begin(1)
        options = _options(opts, _FIND_OPTIONS)
        scope = _scope(options)
        limit = _top_limit(options.get("limit"))
        after = options.get("after")
        place: TopPlace | None = None
        if after is not None:
            if not isinstance(after, str):
                raise HostCallError(
                    f"opts.after must be a key (a string), got a {kvlogic.lua_type_name(after)}")
            place = await self._place(scope, after)
            if place is None:
                raise HostCallError(
                    f"opts.after: key {after!r} is not on the leaderboard of scope {scope!r} "
                    "(it does not exist or its value is not a number)")
        records = await self._top(scope, place, limit)
        return [record.to_json() for record in records]

    async def rank(self, key: JsonValue, opts: JsonValue = None) -> JsonValue:
        """The 1-based position of ``key`` in ``top``'s order, or nil when it does not rank."""
        self._begin(1)
        scope = _scope(_options(opts, _SCOPE_ONLY))
        place = await self._place(scope, _key(key, self._limits))
        if place is None:
            return None
        now = self._clock()
        ahead = await self._store.ahead(self._tenant, scope, place, now=now)
        # The run's own writes: as with count, each changed key moves from where it was
        # committed (its row when the run first loaded it) to where the run left it.
        for (entry_scope, _), entry in self._pending.items():
            if entry.dirty and entry_scope == scope:
                ahead += _is_ahead(entry.row, place, now) - _is_ahead(entry.base, place, now)
        return ahead + 1

    async def _place(self, scope: str, key: str) -> TopPlace | None:
        record = await self._read(scope, key)
        number = None if record is None else kvlogic.rank_number(record.value)
        return None if number is None else (number, key)

    async def _top(self, scope: str, after: TopPlace | None, limit: int) -> list[KVRecord]:
        now = self._clock()
        overlay = {key: entry.row for (entry_scope, key), entry in self._pending.items()
                   if entry.dirty and entry_scope == scope}
        # As in _find: enough more that dropping the keys the run changed still leaves
        # `limit` if the store has them.
        committed = await self._store.top(self._tenant, scope, after=after,
                                          limit=limit + len(overlay), now=now)
        merged = {record.key: record for record in committed if record.key not in overlay}
        start = None if after is None else kvlogic.top_order(*after)
        for key, row in overlay.items():
            order = _top_order(row, now)
            if order is not None and row is not None and (start is None or order > start):
                merged[key] = row
        ranked = sorted(merged.values(), key=lambda record: _top_order(record, now) or (0, ""))
        return ranked[:limit]

    # -- the run's end ---------------------------------------------------------------------
    def take_effects(self) -> RunEffects:
        return RunEffects(writes=tuple(self._end()))

    def discard(self) -> None:
        self._end()

    async def commit(self) -> list[KVResult]:
        """Stores every buffered write in one transaction (a session outside a handler run)."""
        writes = self._end()
        if not writes:
            return []
        return await self._store.apply(self._tenant, writes, now=self._clock(),
                                       max_keys=self._limits.keys_per_tenant)

    async def rollback(self) -> None:
        self._end()

    def _end(self) -> list[KVWrite]:
        if self._closed:
            raise RuntimeError("this ctx.kv session was already committed or rolled back")
        self._closed = True
        writes = self._writes
        self._writes = []
        self._pending.clear()
        return writes

    # -- parsing ---------------------------------------------------------------------------
    def _begin(self, cost: int) -> None:
        if self._closed:
            raise HostCallError("ctx.kv cannot be used after the handler run has ended")
        self._limiter.acquire("kv", cost, key=self._tenant)

    def _parse_set(self, key: JsonValue, value: JsonValue, opts: JsonValue) -> tuple[KVSet, int]:
        options = _options(opts, _SET_OPTIONS)
        scope = _scope(options)
        checked_key = _key(key, self._limits)
        size = _value_size(value, self._limits)
        resume = options.get("resume")
        if resume is not None and not isinstance(resume, bool):
            raise HostCallError(
                f"opts.resume must be a boolean, got a {kvlogic.lua_type_name(resume)}")
        expires_at = self._expiry(options)
        return KVSet(scope, checked_key, value, expires_at, bool(resume)), size

    def _parse_expire(self, key: JsonValue, ttl: JsonValue, opts: JsonValue) -> KVExpire:
        options = _options(opts, _SCOPE_ONLY)
        expires_at = None if ttl is None else self._clock() + _positive(ttl, "ttl")
        return KVExpire(_scope(options), _key(key, self._limits), expires_at)

    def _parse_delete(self, key: JsonValue, opts: JsonValue) -> KVDelete:
        options = _options(opts, _SCOPE_ONLY)
        return KVDelete(_scope(options), _key(key, self._limits))

    def _parse_incr(self, key: JsonValue, by: JsonValue, opts: JsonValue) -> KVIncr:
        options = _options(opts, _SCOPE_ONLY)
        amount = 1 if by is None else _number(by, "by")
        return KVIncr(_scope(options), _key(key, self._limits), amount)

    def _parse_batch_op(self, op: JsonValue) -> tuple[KVWrite, int]:
        if not isinstance(op, list) or not op or not isinstance(op[0], str):
            raise HostCallError(
                'each op is a list like {"set", key, value, opts}, {"delete", key, opts} or '
                '{"incr", key, by, opts}')

        def item(index: int) -> JsonValue:
            return op[index] if index < len(op) else None

        match op[0]:
            case "set":
                return self._parse_set(item(1), item(2), item(3))
            case "delete":
                return self._parse_delete(item(1), item(2)), 0
            case "incr":
                return self._parse_incr(item(1), item(2), item(3)), 0
        raise HostCallError(f"unknown batch op {op[0]!r} (use set, delete or incr)")

    def _expiry(self, options: dict[str, JsonValue]) -> float | None:
        ttl, expires_at = options.get("ttl"), options.get("expires_at")
        if ttl is not None and expires_at is not None:
            raise HostCallError("give opts.ttl or opts.expires_at, not both")
        if ttl is not None:
            return self._clock() + _positive(ttl, "opts.ttl")
        if expires_at is not None:
            return _number(expires_at, "opts.expires_at")
        return None

    # -- the overlay -----------------------------------------------------------------------
    async def _read(self, scope: str, key: str) -> KVRecord | None:
        entry = self._pending.get((scope, key))
        now = self._clock()
        if entry is not None and entry.dirty:
            row = entry.row
            return row if row is not None and row.is_live(now) else None
        return await self._store.get(self._tenant, scope, key, now=now)

    async def _load(self, writes: list[KVWrite]) -> dict[tuple[str, str], _Pending]:
        """The overlay entries of the keys of ``writes``, loading the new ones in one call."""
        missing = [row_key for row_key in dict.fromkeys((w.scope, w.key) for w in writes)
                   if row_key not in self._pending]
        if missing:
            rows, stored = await self._store.load_rows(self._tenant, missing)
            self._add_loaded(missing, rows, stored)
        return {(w.scope, w.key): self._pending[w.scope, w.key] for w in writes}

    def _add_loaded(self, missing: list[tuple[str, str]],
                    rows: dict[tuple[str, str], KVRecord], stored: int) -> None:
        if self._stored_rows is None:
            self._stored_rows = stored
        for row_key in missing:
            self._pending.setdefault(row_key, _Pending(rows.get(row_key)))

    async def _write(self, writes: list[KVWrite], value_bytes: int) -> list[KVResult]:
        """Applies ``writes`` to the overlay, all or nothing, and buffers them."""
        pending_bytes = self._check_pending_bytes(value_bytes, len(writes))
        entries = await self._load(writes)
        now = self._clock()
        staged, results, delta, writes = self._stage(writes, entries, now)
        if delta > 0:
            await self._check_key_limit(delta, now)
        self._keep(staged, entries, writes, pending_bytes)
        return results

    def _check_pending_bytes(self, value_bytes: int, count: int) -> int:
        """What the run's buffered writes would weigh with these; refuses past the limit."""
        pending_bytes = self._pending_bytes + value_bytes + _WRITE_OVERHEAD * count
        if pending_bytes > self._max_pending_bytes:
            raise LimitExceeded(
                "kv.run_writes",
                f"the writes of one handler run may buffer at most {self._max_pending_bytes} "
                "bytes until it returns")
        return pending_bytes

    def _stage(
        self, writes: list[KVWrite], entries: dict[tuple[str, str], _Pending], now: float,
    ) -> tuple[dict[tuple[str, str], KVRecord | None], list[KVResult], int, list[KVWrite]]:
        """The writes applied to the overlay's rows, not kept yet: (new rows, results, the
        change in live keys, the writes stamped with ``now``)."""
        writes = [dataclasses.replace(write, at=now) for write in writes]
        staged: dict[tuple[str, str], KVRecord | None] = {}
        results: list[KVResult] = []
        for write in writes:
            row_key = (write.scope, write.key)
            current = staged[row_key] if row_key in staged else entries[row_key].row
            new, result = kvlogic.apply_write(write, current, now)
            staged[row_key] = new
            results.append(result)
        delta = sum(_live(row, now) - _live(entries[row_key].row, now)
                    for row_key, row in staged.items())
        return staged, results, delta, writes

    def _keep(self, staged: dict[tuple[str, str], KVRecord | None],
              entries: dict[tuple[str, str], _Pending], writes: list[KVWrite],
              pending_bytes: int) -> None:
        for row_key, row in staged.items():
            entry = entries[row_key]
            entry.row = row
            entry.dirty = True
        self._writes.extend(writes)
        self._pending_bytes = pending_bytes

    def _within_key_bound(self, delta: int, now: float) -> bool:
        """Whether ``delta`` more live keys surely fit, without counting the stored ones."""
        limit = self._limits.keys_per_tenant
        stored = self._stored_rows or 0
        # Cheap bound first: each pending key adds at most one live key.
        if stored + len(self._pending) + delta <= limit:
            return True
        return stored + self._overlay_live(now) + delta <= limit

    def _overlay_live(self, now: float) -> int:
        """How many live keys the run's overlay adds to what is stored."""
        return sum(_live(entry.row, now) - _live(entry.base, now)
                   for entry in self._pending.values())

    async def _check_key_limit(self, delta: int, now: float) -> None:
        """Refuses writes that would take the tenant past its live-key limit.

        The store checks again, exactly, at commit; this check makes the template's own call
        fail, at its line, instead of its whole run at the end.
        """
        if self._within_key_bound(delta, now):
            return
        committed = await self._store.count(self._tenant, None, now=now)
        kvlogic.check_key_limit(delta, self._limits.keys_per_tenant,
                                committed + self._overlay_live(now))

    async def _find(
        self, scope: str, prefix: str, after: str | None, limit: int,
    ) -> list[KVRecord]:
        now = self._clock()
        overlay = {
            key: entry.row for (entry_scope, key), entry in self._pending.items()
            if entry.dirty and entry_scope == scope and key.startswith(prefix)
            and (after is None or key > after)}
        # Ask for as many more as the run has changed, so that after dropping the keys the run
        # deleted there are still `limit` left if the store has them.
        committed = await self._store.find(
            self._tenant, scope, prefix, after=after, limit=limit + len(overlay), now=now)
        merged = {record.key: record for record in committed if record.key not in overlay}
        for key, row in overlay.items():
            if row is not None and row.is_live(now):
                merged[key] = row
        return [merged[key] for key in sorted(merged)[:limit]]


# -- argument checks ---------------------------------------------------------------------------
def _options(opts: JsonValue, allowed: frozenset[str]) -> dict[str, JsonValue]:
    # An empty Lua table reaches Python as [] or {} depending on how it was built.
    if opts is None or opts in ([], {}):
        return {}
    if not isinstance(opts, dict):
        raise HostCallError(f"opts must be a table, got a {kvlogic.lua_type_name(opts)}")
    for name in opts:
        if name not in allowed:
            raise HostCallError(
                f"unknown option {name!r} (known here: {', '.join(sorted(allowed))})")
    return opts


def _scope(options: dict[str, JsonValue]) -> str:
    scope = options.get("scope")
    if scope is None:
        return DEFAULT_SCOPE
    if not isinstance(scope, str) or not scope:
        raise HostCallError("opts.scope must be a non-empty string")
    size = len(_utf8(scope, "opts.scope"))
    if size > SCOPE_BYTES:
        raise HostCallError(f"opts.scope is {size} bytes; the limit is {SCOPE_BYTES}")
    return scope


def _key(key: JsonValue, limits: Limits) -> str:
    if not isinstance(key, str) or not key:
        got = "an empty string" if key == "" else f"a {kvlogic.lua_type_name(key)}"
        raise HostCallError(f"key must be a non-empty string, got {got}")
    size = len(_utf8(key, "key"))
    if size > limits.key_bytes:
        raise KVSizeError("kv.key_size", f"key is {size} bytes; the limit is {limits.key_bytes}")
    return key


def _utf8(text: str, what: str) -> bytes:
    # NUL cannot be stored by PostgreSQL; a lone surrogate is not text. Both stores refuse
    # the same keys.
    if "\x00" in text:
        raise HostCallError(f"{what} must not contain a NUL character")
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise HostCallError(f"{what} is not valid UTF-8 text") from None


def _value_size(value: JsonValue, limits: Limits) -> int:
    """The encoded size of a value to store; refuses nil, non-JSON values and big values."""
    if value is None:
        raise HostCallError("value is nil; use delete to remove a key")
    if not isinstance(value, str | int):  # bool is an int
        _check_json(value)
    try:
        encoded = kvlogic.encode_value(value)
    except (TypeError, ValueError, RecursionError) as error:
        raise HostCallError(f"value is not JSON-compatible: {error}") from None
    size = len(encoded.encode())
    if size > limits.value_bytes:
        raise KVSizeError(
            "kv.value_size",
            f"value is {size} bytes encoded; the limit is {limits.value_bytes}")
    return size


def _check_json(value: JsonValue) -> None:
    """Refuses what JSON would silently change (non-string object keys) or cannot hold."""
    stack: list[tuple[object, int]] = [(value, 0)]
    seen: set[int] = set()
    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise HostCallError("value holds a number that is not finite (NaN or infinity)")
            continue
        if depth >= _MAX_DEPTH:
            raise HostCallError(f"value nests deeper than {_MAX_DEPTH} levels")
        if id(item) in seen:
            continue  # a shared table is checked once; a cycle fails in the encoder
        seen.add(id(item))
        if isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            for name, child in item.items():
                if not isinstance(name, str):
                    raise HostCallError(f"value has a table key that is not a string: {name!r}")
                stack.append((child, depth + 1))
        else:
            raise HostCallError(f"value holds a {type(item).__name__}, which JSON cannot hold")


def _number(value: JsonValue, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HostCallError(f"{what} must be a number, got a {kvlogic.lua_type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise HostCallError(f"{what} must be a finite number")
    return value


def _positive(value: JsonValue, what: str) -> float:
    number = _number(value, what)
    if number <= 0:
        raise HostCallError(f"{what} must be a positive number of seconds, got {number}")
    return float(number)


def _find_limit(value: JsonValue) -> int:
    if value is None:
        return FIND_LIMIT
    number = _number(value, "opts.limit")
    if number != int(number) or not 1 <= number <= FIND_LIMIT:
        raise HostCallError(f"opts.limit must be a whole number from 1 to {FIND_LIMIT}")
    return int(number)


def _live(row: KVRecord | None, now: float) -> int:
    return 1 if row is not None and row.is_live(now) else 0


def _top_limit(value: JsonValue) -> int:
    if value is None:
        return TOP_LIMIT
    number = _number(value, "opts.limit")
    if number != int(number) or not 1 <= number <= TOP_MAX:
        raise HostCallError(f"opts.limit must be a whole number from 1 to {TOP_MAX}")
    return int(number)


def _top_order(row: KVRecord | None, now: float) -> tuple[float, str] | None:
    """Where a row sorts on its scope's leaderboard; None when it is not on it."""
    if row is None or not row.is_live(now):
        return None
    number = kvlogic.rank_number(row.value)
    return None if number is None else kvlogic.top_order(number, row.key)


def _is_ahead(row: KVRecord | None, place: TopPlace, now: float) -> int:
    order = _top_order(row, now)
    return 1 if order is not None and order < kvlogic.top_order(*place) else 0


def _result_json(result: KVResult, *, incr: bool = False) -> JsonValue:
    if isinstance(result, KVRecord):
        return result.value if incr else result.to_json()
    return result
