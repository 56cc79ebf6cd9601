"""The request bodies of the HTTP API, and the check every JSON value passes at the door.

Bodies are strict (no coercion of ``"1"`` to ``1``) and refuse unknown fields, so a typo is
a 422 naming the field rather than a silently ignored option. Each body first passes
``check_wire_value``: JSON that parses in Python but could not cross to a worker process
or into Lua (NaN, integers past 64 bits, lone surrogates, very deep nesting) is refused
here, as invalid input, instead of failing deeper down.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_DEPTH",
    "EventBody",
    "GatewayBody",
    "KVBody",
    "RollbackBody",
    "TemplateBody",
    "TokenBody",
    "check_wire_value",
    "parse_lenient",
]

# The sandbox's value bridge refuses deeper nesting; refusing it here gives a clear 422.
MAX_DEPTH = 100
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _check_text(text: str, where: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{where}: text is not valid Unicode (a lone surrogate)") from None


def parse_lenient(data: Any) -> Any:
    """A body sent without ``Content-Type: application/json`` reaches a model as bytes (curl's
    default is form encoding): read it as JSON anyway."""
    if not isinstance(data, bytes | bytearray):
        return data
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("the body is not valid JSON") from None


def check_wire_value(value: object, where: str = "body") -> None:
    """Raises ValueError when ``value`` is not JSON that a template can receive."""
    stack: list[tuple[object, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                raise ValueError(f"{path}: integer out of the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path}: numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, str):
            _check_text(item, path)
        elif depth >= MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]", depth + 1)
                         for index, child in enumerate(item))
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path}: object keys must be strings")
                _check_text(key, f"{path} key")
                stack.append((child, f"{path}.{key}", depth + 1))
        else:
            raise ValueError(f"{path}: {type(item).__name__} is not a JSON value")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _wire(cls, data: Any) -> Any:
        data = parse_lenient(data)
        check_wire_value(data)
        return data


class TemplateBody(_Body):
    """``PUT .../templates/{name}``."""

    files: dict[str, str] = Field(description="Lua source by file path; needs init.lua")
    paused: bool = False


class RollbackBody(_Body):
    """``POST .../templates/{name}/rollback``; an empty body rolls back to the previous
    kept version."""

    version: int | None = Field(default=None, ge=1,
                                description="The kept version to go back to")


class EventBody(_Body):
    """``POST .../events``."""

    name: str = Field(min_length=1, max_length=100, description="The event name")
    data: Any = Field(default=None, description="Any JSON value; templates see event.data")
    author: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$",
                               description="The user snowflake the event is from")


class GatewayBody(BaseModel):
    """``POST /v1/gateway``: a raw Discord gateway dispatch; fields besides t and d are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    t: str = Field(min_length=1, max_length=100, description="The dispatch name")
    d: dict[str, Any] = Field(description="The dispatch data")

    @model_validator(mode="before")
    @classmethod
    def _wire(cls, data: Any) -> Any:
        data = parse_lenient(data)
        check_wire_value(data)
        return data


class KVBody(_Body):
    """``PUT .../kv/{scope}/{key}``: the same options as ``ctx.kv.set``."""

    value: Any = Field(description="Any JSON value but null (use DELETE to remove a key)")
    ttl: float | int | None = Field(default=None, description="Seconds until the key expires")
    expires_at: float | int | None = Field(default=None,
                                           description="Unix seconds when the key expires")
    resume: bool = False


class TokenBody(_Body):
    """``POST /v1/tokens``."""

    tenant: str = Field(description="The tenant the token reaches: guild:<id> or user:<id>")
    label: str | None = Field(default=None, max_length=200,
                              description="What the token is for, shown in GET /v1/tokens")
