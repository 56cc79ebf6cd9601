"""The rules of a key's life: what each write does to a stored row.

Pure functions shared by both stores (inside their write transaction) and by the run overlay
of ``ctx.kv`` (``moonshard.host.kv``), so what a handler sees during its run and what its
commit stores follow the same rules.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence

from moonshard.errors import HostCallError, LimitExceeded
from moonshard.store.api import KVDelete, KVIncr, KVRecord, KVResult, KVSet, KVWrite
from moonshard.values import JsonValue

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "WritePlan",
    "add_number",
    "apply_write",
    "check_key_limit",
    "encode_value",
    "lua_type_name",
    "needs_live_count",
    "plan_writes",
    "prefix_end",
    "rank_number",
    "rank_number_text",
    "top_order",
    "touched_keys",
]

# Lua 5.4 integers are 64-bit; an incr past them is refused rather than wrapped or widened.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

RowKey = tuple[str, str]
"""(scope, key)"""

encode_value = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
"""``moonshard.values.dumps_json`` with its encoder built once: stored values are encoded on
every write, and building an encoder per call costs as much as encoding a small value."""


def lua_type_name(value: JsonValue) -> str:
    """The Lua name of a JSON value's type, for messages a template author reads."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "table"


def add_number(current: JsonValue, by: int | float, key: str) -> int | float:
    """``current + by`` with Lua's integer/float rules; refuses non-numbers and overflow."""
    if isinstance(current, bool) or not isinstance(current, int | float):
        raise HostCallError(
            f"the value of key {key!r} is a {lua_type_name(current)}, not a number")
    result = current + by
    if isinstance(result, int):
        if not INT64_MIN <= result <= INT64_MAX:
            raise HostCallError(f"incrementing key {key!r} overflows a 64-bit integer")
    elif not math.isfinite(result):
        raise HostCallError(f"incrementing key {key!r} gives a number that is not finite")
    return result


def apply_write(
    write: KVWrite, row: KVRecord | None, now: float,
) -> tuple[KVRecord | None, KVResult]:
    """The row after ``write`` (None: no row) and the write's result.

    ``row`` is the stored row even if it has expired; an expired row counts as absent (judged
    at ``now``), but its version keeps growing so a timer holding the old version never
    deletes the new key. Timestamps are the write's ``at`` when it has one, else ``now``.
    """
    live = row is not None and row.is_live(now)
    next_version = row.version + 1 if row is not None else 1
    stamp = now if write.at is None else write.at
    if isinstance(write, KVSet):
        created = row.created_at if live and row is not None else stamp
        new = KVRecord(write.key, write.scope, write.value, next_version, created, stamp,
                       write.expires_at, write.resume)
        return new, new
    if isinstance(write, KVDelete):
        # An expired row stays for the timer service: it still owes a KeyExpiry for it.
        return (None, True) if live else (row, False)
    if isinstance(write, KVIncr):
        if live and row is not None:
            value = add_number(row.value, write.by, write.key)
            new = dataclasses.replace(row, value=value, version=next_version, updated_at=stamp)
        else:
            value = add_number(0, write.by, write.key)
            new = KVRecord(write.key, write.scope, value, next_version, stamp, stamp)
        return new, new
    if not live or row is None:
        return row, None
    new = dataclasses.replace(
        row, expires_at=write.expires_at, version=next_version, updated_at=stamp)
    return new, new


@dataclasses.dataclass(slots=True)
class WritePlan:
    """What a list of writes does to the stored rows: the changes to make, and the results."""

    results: list[KVResult]
    inserts: list[KVRecord]
    updates: list[KVRecord]
    deletes: list[RowKey]
    # Live keys after minus live keys before, over the touched keys.
    live_delta: int

    @property
    def row_delta(self) -> int:
        return len(self.inserts) - len(self.deletes)


def touched_keys(writes: Iterable[KVWrite]) -> list[RowKey]:
    """The distinct (scope, key) pairs of ``writes``, sorted: one lock order for everyone."""
    return sorted({(write.scope, write.key) for write in writes})


def plan_writes(
    writes: Sequence[KVWrite], rows: Mapping[RowKey, KVRecord], now: float,
) -> WritePlan:
    """Runs ``writes`` over the stored ``rows`` of their keys (absent keys missing)."""
    current: dict[RowKey, KVRecord | None] = dict(rows)
    results: list[KVResult] = []
    for write in writes:
        row_key = (write.scope, write.key)
        new, result = apply_write(write, current.get(row_key), now)
        current[row_key] = new
        results.append(result)
    plan = WritePlan(results, [], [], [], 0)
    for row_key, after in current.items():
        before = rows.get(row_key)
        if after is before:
            continue
        if after is None:
            plan.deletes.append(row_key)
        elif before is None:
            plan.inserts.append(after)
        else:
            plan.updates.append(after)
        plan.live_delta += _live(after, now) - _live(before, now)
    return plan


def _live(row: KVRecord | None, now: float) -> int:
    return 1 if row is not None and row.is_live(now) else 0


def needs_live_count(plan: WritePlan, max_keys: int | None, stored_rows: int) -> bool:
    """Whether the key limit needs an exact count of live keys.

    ``stored_rows`` (expired rows included) bounds the live keys from above, so only a tenant
    near its limit pays for counting.
    """
    return (max_keys is not None and plan.live_delta > 0
            and stored_rows + plan.live_delta > max_keys)


def check_key_limit(live_delta: int, max_keys: int, live_before: int) -> None:
    """Refuses writes that grow a tenant's live keys past ``max_keys``."""
    after = live_before + live_delta
    if live_delta > 0 and after > max_keys:
        raise LimitExceeded(
            "kv.keys",
            f"a tenant may keep at most {max_keys} keys; this write would make {after}")


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (None: no bound).

    Lets ``find`` scan an index range ``prefix <= key < prefix_end(prefix)`` in both stores.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < 0x10FFFF:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates are not text: skip to the next character
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


# -- leaderboards ------------------------------------------------------------------------------
# A value ranks (``ctx.kv.top``, ``rank``) when it is a number whose JSON text is at most 300
# characters (every float; integers from -10^299 to 10^300 exclusive), compared as a 64-bit
# float. The stores keep that float in ``kv.num_value`` on every write.
_RANK_TEXT_CHARS = 300
_RANK_INT_LOW, _RANK_INT_HIGH = -(10**299), 10**300
_NUMBER_START = frozenset("-0123456789")


def rank_number(value: JsonValue) -> float | None:
    """The number ``value`` ranks by on a leaderboard, or None when it does not rank."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value) if _RANK_INT_LOW < value < _RANK_INT_HIGH else None
    return None


def rank_number_text(encoded: str | None) -> float | None:
    """``rank_number`` of a stored (JSON-encoded) value, without decoding it."""
    if not encoded or encoded[0] not in _NUMBER_START or len(encoded) > _RANK_TEXT_CHARS:
        return None
    return float(encoded)


def top_order(number: float, key: str) -> tuple[float, str]:
    """Where a ranking key sorts in ``top``'s order: highest number first, then by key
    (code point order, as the stores sort keys)."""
    return (-number, key)
