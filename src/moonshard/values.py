"""The JSON-compatible values that cross between templates, the store and the outside world."""

from __future__ import annotations

import json
from typing import TypeAlias

__all__ = ["JsonValue", "dumps_json", "loads_json"]

JsonValue: TypeAlias = (
    bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
)


def dumps_json(value: JsonValue) -> str:
    """Compact, strict JSON (no NaN or infinity)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads_json(text: str | bytes) -> JsonValue:
    value: JsonValue = json.loads(text)
    return value
