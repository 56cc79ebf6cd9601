"""Converting values between Lua and JSON-compatible Python, with clear errors."""

from __future__ import annotations

import math
from typing import Any

from lupa import lua54

from moonshard.errors import ValueConversionError
from moonshard.values import JsonValue

__all__ = ["MAX_DEPTH", "ValueBridge"]

# JSON nesting deeper than this is refused; it also stops a cycle.
MAX_DEPTH = 100
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class ValueBridge:
    """Builds plain Lua tables from JSON values and reads them back, for one Lua runtime.

    Reading uses raw iteration only, so no template metamethod runs outside its handler.
    """

    __slots__ = ("_empty_kind", "_find_cycle", "_null", "_object", "_runtime")

    def __init__(self, runtime: Any, kernel: Any) -> None:
        self._runtime = runtime
        self._null = kernel.null
        self._empty_kind = kernel.empty_kind
        self._find_cycle = kernel.find_cycle
        self._object = kernel.object

    # -- Python to Lua --------------------------------------------------------------------
    def to_lua(self, value: JsonValue, depth: int = 0) -> Any:
        if value is None:
            return self._null
        if isinstance(value, bool | str):
            return value
        if isinstance(value, int):
            return value if _INT_MIN <= value <= _INT_MAX else float(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueConversionError("numbers must be finite (no NaN or infinity)")
            return value
        if depth >= MAX_DEPTH:
            raise ValueConversionError(f"value nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            return self._runtime.table_from([self.to_lua(item, depth + 1) for item in value])
        if isinstance(value, dict):
            if not value:
                return self._object()
            items = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueConversionError(f"object keys must be strings, got {key!r}")
                items[key] = self.to_lua(item, depth + 1)
            return self._runtime.table_from(items)
        raise ValueConversionError(f"cannot give a {type(value).__name__} to Lua")

    # -- Lua to Python --------------------------------------------------------------------
    def to_python(self, obj: Any, what: str = "value") -> JsonValue:
        try:
            return self._read(obj, 0, obj)
        except UnicodeDecodeError:
            raise ValueConversionError(f"{what}: a string is not valid UTF-8") from None
        except ValueConversionError as error:
            raise ValueConversionError(f"{what}: {error}") from None

    def _read(self, obj: Any, depth: int, root: Any) -> JsonValue:
        if obj is None or isinstance(obj, bool | str | int):
            return obj
        if isinstance(obj, float):
            if not math.isfinite(obj):
                raise ValueConversionError("numbers must be finite (no NaN or infinity)")
            return obj
        kind = lua54.lua_type(obj)
        if kind != "table":
            name = kind or type(obj).__name__
            raise ValueConversionError(f"a {name} cannot be converted to JSON")
        if depth >= MAX_DEPTH:
            if self._find_cycle(root):
                raise ValueConversionError("the table contains a cycle (it refers to itself)")
            raise ValueConversionError(f"tables nest deeper than {MAX_DEPTH} levels")
        entries = list(obj.items())
        if not entries:
            empty = self._empty_kind(obj)
            return None if empty == "null" else {} if empty == "object" else []
        keys = [key for key, _ in entries]
        if all(isinstance(key, str) for key in keys):
            return {key: self._read(value, depth + 1, root) for key, value in entries}
        if all(isinstance(key, int) and not isinstance(key, bool) for key in keys):
            ordered = sorted(entries)
            if ordered[0][0] != 1 or ordered[-1][0] != len(ordered):
                raise ValueConversionError(
                    "an array table must have keys 1..n with no holes (is there a nil inside? "
                    "use json.null)")
            return [self._read(value, depth + 1, root) for _, value in ordered]
        bad = next(key for key in keys if not isinstance(key, str))
        if isinstance(bad, int | float) and not isinstance(bad, bool):
            raise ValueConversionError(
                f"a table mixes array items and string keys (key {bad!r}); use one or the other")
        bad_kind = lua54.lua_type(bad) or type(bad).__name__
        raise ValueConversionError(f"table keys must be strings, got a {bad_kind} key")
