"""The JSON-compatible values that cross between templates, the store and the outside world."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

__all__ = ["JsonField", "JsonValue", "dumps_json", "loads_json"]

JsonValue: TypeAlias = (
    bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
)

if TYPE_CHECKING:
    JsonField: TypeAlias = JsonValue
else:
    # The wire codec (msgspec) reads field types at run time and cannot follow the recursive
    # alias; to it a JSON field is Any, which decodes to exactly the plain JSON values.
    JsonField = Any
"""``JsonValue`` for the fields of values that cross the process wire (events, results)."""


def dumps_json(value: JsonValue) -> str:
    """Compact, strict JSON (no NaN or infinity)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads_json(text: str | bytes) -> JsonValue:
    value: JsonValue = json.loads(text)
    return value
