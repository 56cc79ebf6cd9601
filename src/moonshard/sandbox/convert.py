"""The one door between a tenant's Lua state and the host: every value that crosses goes here.

Rules it keeps, so that no template can use a crossing against the host:

- Only plain values cross: nil, booleans, finite numbers, UTF-8 strings, and tables that are
  arrays or string-keyed maps. Python objects never reach Lua; Lua functions, threads and
  userdata never reach Python.
- Tables are read raw (``lua_next``, raw lengths, ``rawequal``): no template metamethod runs
  while a value crosses, so nothing of a template ever runs outside its limits.
- Work is bounded before it is done. Reading Lua walks at most ``budget`` encoded bytes
  (a string referenced a hundred times counts a hundred times), and building Lua first
  estimates what the value will cost the VM and refuses it when it cannot fit in what is
  left of the memory limit.
- Building Lua values from Python happens outside any protected Lua call, where running out
  of memory would abort the process. So the door lifts the VM's memory limit while it builds
  (the estimate already bounded what it builds) and puts it back before any template code
  runs again; a VM left over its limit fails at its next allocation, inside the run.
- Errors are ``ValueConversionError`` with a message for template authors, or ``DoorLimit``
  when a limit broke; never a Python error text.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any

from lupa import lua54

from moonshard.errors import ValueConversionError
from moonshard.values import JsonValue

__all__ = ["MAX_DEPTH", "DoorLimit", "ValueDoor", "ValueTooLarge"]

# JSON nesting deeper than this is refused; it also stops a cycle.
MAX_DEPTH = 100
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

# What a value costs a Lua 5.4 state, rounded up (64-bit: a table header is 56 bytes, an
# array slot 16, a hash node 32 with power-of-two growth, a string 24 plus its bytes).
_TABLE_COST = 64
_ARRAY_ITEM_COST = 32
_MAP_ENTRY_COST = 64
_STRING_COST = 32


class DoorLimit(Exception):
    """A crossing could not be made within a limit of the run (``kind``: ``"memory"``)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ValueTooLarge(ValueConversionError):
    """A value read from Lua encodes to more bytes than the crossing allows."""


class ValueDoor:
    """Converts values for one Lua runtime; used by one thread at a time, like its VM."""

    __slots__ = ("_empty_kind", "_find_cycle", "_lifts", "_memory_limit", "_null", "_object",
                 "_runtime")

    def __init__(self, runtime: Any, kernel: Any, memory_limit: int) -> None:
        self._runtime = runtime
        self._memory_limit = memory_limit
        self._lifts = 0  # lifted() may nest; the limit comes back when the outermost ends
        self._null = kernel.null
        self._empty_kind = kernel.empty_kind
        self._find_cycle = kernel.find_cycle
        self._object = kernel.object

    # -- the memory limit -----------------------------------------------------------------
    def lifted(self) -> ValueDoor:
        """No memory limit inside (``with door.lifted():``): for host-side work on the Lua
        state between template code. The door is its own context manager (no object is made
        per crossing, on the hot path of every run)."""
        return self

    def __enter__(self) -> None:
        if self._lifts == 0:
            self._runtime.set_max_memory(0)
        self._lifts += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._lifts -= 1
        if self._lifts == 0:
            self._runtime.set_max_memory(self._memory_limit)

    def remaining(self) -> int:
        """Bytes the VM may still allocate under its limit."""
        return self._memory_limit - int(self._runtime.get_memory_used())

    # -- Python to Lua --------------------------------------------------------------------
    def box(self, *values: JsonValue) -> Any:
        """A Lua array of ``values`` (an answer, call arguments), built with the limit lifted.

        A top-level None is nil; nested ones are ``json.null``. Raises ValueConversionError
        for what JSON cannot hold and DoorLimit("memory") when the values would not fit in
        what is left of the VM's memory. Lupa allocates when it pushes a string or makes a
        reference; inside a table made here that has already happened, so handing the table
        to Lua cannot run out of memory in lupa's own C code.
        """
        cost = sum(self._lua_cost(value, 0) for value in values)
        if cost > self.remaining():
            raise DoorLimit("memory")
        with self.lifted():
            return self._runtime.table_from(
                [None if value is None else self._build(value) for value in values])

    def box_with(self, scalars: tuple[str | int | float | None, ...], value: JsonValue) -> Any:
        """Like ``box(*scalars, value)`` for the host's scalars and one value of any shape
        (a run's start: its names, ids and time, then the event's data), with the scalars
        checked without the general walk: this is on every event's path. A ``value`` of
        None is left out (nil), not ``json.null``."""
        cost = self._lua_cost(value, 0)
        for scalar in scalars:
            if isinstance(scalar, str):
                cost += _STRING_COST + _utf8_size(scalar)
            elif isinstance(scalar, float) and not math.isfinite(scalar):
                raise ValueConversionError("numbers must be finite (no NaN or infinity)")
        if cost > self.remaining():
            raise DoorLimit("memory")
        with self.lifted():
            return self._runtime.table_from(
                [*scalars, None if value is None else self._build(value)])

    def box_text(self, *texts: str | bytes | int | float | bool | None) -> Any:
        """Like ``box`` for the host's own scalars and short texts: never refused."""
        with self.lifted():
            return self._runtime.table_from(list(texts))

    def null_box(self) -> Any:
        """A box holding ``json.null``."""
        with self.lifted():
            return self._runtime.table_from([self._null])

    def _lua_cost(self, value: JsonValue, depth: int) -> int:
        """Estimated bytes of Lua memory for ``value``; validates it on the way."""
        if value is None or isinstance(value, bool | int):
            return 0
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueConversionError("numbers must be finite (no NaN or infinity)")
            return 0
        if isinstance(value, str):
            return _STRING_COST + _utf8_size(value)
        if depth >= MAX_DEPTH:
            raise ValueConversionError(f"value nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            return _TABLE_COST + sum(
                _ARRAY_ITEM_COST + self._lua_cost(item, depth + 1) for item in value)
        if isinstance(value, dict):
            total = _TABLE_COST
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueConversionError(f"object keys must be strings, got {key!r}")
                total += _MAP_ENTRY_COST + _STRING_COST + _utf8_size(key)
                total += self._lua_cost(item, depth + 1)
            return total
        raise ValueConversionError(f"cannot give a {type(value).__name__} to Lua")

    def _build(self, value: JsonValue) -> Any:
        """Builds a validated value (see ``_lua_cost``); call with the limit lifted."""
        if value is None:
            return self._null
        if isinstance(value, int) and not isinstance(value, bool):
            return value if _INT_MIN <= value <= _INT_MAX else float(value)
        if isinstance(value, list):
            return self._runtime.table_from([self._build(item) for item in value])
        if isinstance(value, dict):
            if not value:
                return self._object()
            return self._runtime.table_from(
                {key: self._build(item) for key, item in value.items()})
        return value

    # -- Lua to Python --------------------------------------------------------------------
    def to_python(self, obj: Any, what: str, budget: int, limit_name: str) -> JsonValue:
        """Reads a Lua value; ``budget`` bounds its encoded size (``limit_name`` names it)."""
        reader = _Reader(self, budget, limit_name)
        try:
            with self.lifted():
                return reader.read(obj, 0, obj)
        except UnicodeDecodeError:
            raise ValueConversionError(f"{what}: a string is not valid UTF-8") from None
        except ValueTooLarge as error:
            raise ValueTooLarge(f"{what}: {error}") from None
        except ValueConversionError as error:
            raise ValueConversionError(f"{what}: {error}") from None

    def item(self, table: Any, key: str | int, what: str) -> Any:
        """``table[key]`` of a kernel table (lupa decodes a string value on the way)."""
        try:
            with self.lifted():
                return table[key]
        except UnicodeDecodeError:
            raise ValueConversionError(f"{what}: a string is not valid UTF-8") from None

    def empty_kind(self, table: Any) -> str:
        return str(self._empty_kind(table))

    def has_cycle(self, table: Any) -> bool:
        return bool(self._find_cycle(table))


def _utf8_size(text: str) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueConversionError(
            "a string is not valid Unicode (it holds an unpaired surrogate)") from None


class _Reader:
    """One walk over a Lua value, counting the bytes its JSON encoding would take."""

    __slots__ = ("_budget", "_door", "_limit_name", "_used")

    def __init__(self, door: ValueDoor, budget: int, limit_name: str) -> None:
        self._door = door
        self._budget = budget
        self._limit_name = limit_name
        self._used = 0

    def _spend(self, size: int) -> None:
        self._used += size
        if self._used > self._budget:
            raise ValueTooLarge(
                f"value too large: it encodes to more than {self._budget} bytes "
                f"({self._limit_name})")

    def read(self, obj: Any, depth: int, root: Any) -> JsonValue:
        if obj is None or isinstance(obj, bool):
            self._spend(5)
            return obj
        if isinstance(obj, str):
            self._spend(len(obj) + 2)
            return obj
        if isinstance(obj, int):
            self._spend(20)
            return obj
        if isinstance(obj, float):
            if not math.isfinite(obj):
                raise ValueConversionError("numbers must be finite (no NaN or infinity)")
            self._spend(24)
            return obj
        kind = lua54.lua_type(obj)
        if kind != "table":
            raise ValueConversionError(f"a {kind or 'host value'} cannot be converted to JSON")
        if depth >= MAX_DEPTH:
            if self._door.has_cycle(root):
                raise ValueConversionError("the table contains a cycle (it refers to itself)")
            raise ValueConversionError(f"tables nest deeper than {MAX_DEPTH} levels")
        self._spend(2)
        entries = []
        for key, value in obj.items():
            entries.append((key, value))
            self._spend(1)
        if not entries:
            empty = self._door.empty_kind(obj)
            return None if empty == "null" else {} if empty == "object" else []
        first = entries[0][0]
        if isinstance(first, str):
            return self._read_map(entries, depth, root)
        if isinstance(first, int) and not isinstance(first, bool):
            return self._read_array(entries, depth, root)
        raise _mixed_or_bad_key(first)

    def _read_map(self, entries: list[tuple[Any, Any]], depth: int, root: Any) -> JsonValue:
        result: dict[str, JsonValue] = {}
        for key, value in entries:
            if not isinstance(key, str):
                raise _mixed_or_bad_key(key)
            self._spend(len(key) + 3)
            result[key] = self.read(value, depth + 1, root)
        return result

    def _read_array(self, entries: list[tuple[Any, Any]], depth: int, root: Any) -> JsonValue:
        if not all(isinstance(key, int) and not isinstance(key, bool) for key, _ in entries):
            bad = next(key for key, _ in entries
                       if not isinstance(key, int) or isinstance(key, bool))
            raise _mixed_or_bad_key(bad)
        entries.sort(key=lambda entry: int(entry[0]))
        if entries[0][0] != 1 or entries[-1][0] != len(entries):
            raise ValueConversionError(
                "an array table must have keys 1..n with no holes (is there a nil inside? "
                "use json.null)")
        return [self.read(value, depth + 1, root) for _, value in entries]


def _mixed_or_bad_key(key: object) -> ValueConversionError:
    if isinstance(key, str | int | float) and not isinstance(key, bool):
        return ValueConversionError(
            f"a table mixes array items and string keys (key {key!r}); use one or the other")
    return _bad_key(key)


def _bad_key(key: object) -> ValueConversionError:
    if isinstance(key, float):
        return ValueConversionError(f"table keys must be strings, got the number {key!r}")
    kind = "boolean" if isinstance(key, bool) else (lua54.lua_type(key) or "host value")
    return ValueConversionError(f"table keys must be strings, got a {kind} key")
