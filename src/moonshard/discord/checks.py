"""Argument checks of ``ctx.discord`` calls: each refusal is a ``HostCallError`` whose message
the capability prefixes with the call's name."""

from __future__ import annotations

from collections.abc import Mapping

from moonshard.errors import HostCallError
from moonshard.values import JsonValue

__all__ = [
    "MAX_CONTENT",
    "MAX_EMBEDS",
    "MAX_EMBED_CHARS",
    "MAX_REASON",
    "message_body",
    "optional_int",
    "reason",
    "snowflake",
]

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_CHARS = 6000
MAX_REASON = 512
_MAX_SNOWFLAKE = 2**64 - 1


def snowflake(args: Mapping[str, JsonValue], name: str, *, required: bool = True) -> str | None:
    """A snowflake argument as a decimal string (a template may pass a string or an integer)."""
    value = args.get(name)
    if value is None:
        if required:
            raise HostCallError(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise HostCallError(f"{name} must be a snowflake (a string of digits)")
    if isinstance(value, float):
        if not value.is_integer():
            raise HostCallError(f"{name} must be a snowflake (a string of digits)")
        value = int(value)
    text = str(value)
    if not text.isdigit() or not 0 < int(text) <= _MAX_SNOWFLAKE:
        raise HostCallError(f"{name} must be a snowflake (a string of digits), got {text[:40]!r}")
    return text


def reason(args: Mapping[str, JsonValue]) -> str:
    """The audit-log reason a moderation call needs: 1 to 512 characters."""
    value = args.get("reason")
    if value is None or value == "":
        raise HostCallError("reason is required")
    if not isinstance(value, str):
        raise HostCallError("reason must be a string")
    if not value.strip():
        raise HostCallError("reason must not be blank")
    if len(value) > MAX_REASON:
        raise HostCallError(f"reason is {len(value)} characters; at most {MAX_REASON}")
    return value


def optional_int(args: Mapping[str, JsonValue], name: str, low: int, high: int,
                 default: int | None = None) -> int | None:
    value = args.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            (isinstance(value, float) and not value.is_integer()):
        raise HostCallError(f"{name} must be a whole number")
    number = int(value)
    if not low <= number <= high:
        raise HostCallError(f"{name} must be from {low} to {high}, got {number}")
    return number


def _embed_chars(embed: Mapping[str, JsonValue]) -> int:
    """The characters Discord counts toward an embed's 6,000."""
    total = 0
    for key in ("title", "description"):
        value = embed.get(key)
        total += len(value) if isinstance(value, str) else 0
    for key, inner in (("footer", "text"), ("author", "name")):
        part = embed.get(key)
        if isinstance(part, dict):
            value = part.get(inner)
            total += len(value) if isinstance(value, str) else 0
    fields = embed.get("fields")
    if isinstance(fields, list):
        for field in fields:
            if isinstance(field, dict):
                for key in ("name", "value"):
                    value = field.get(key)
                    total += len(value) if isinstance(value, str) else 0
    return total


def message_body(args: Mapping[str, JsonValue], *, need_some: bool = True,
                 ephemeral: bool = False) -> dict[str, JsonValue]:
    """``content``, ``embeds`` and ``components`` checked against Discord's limits."""
    body: dict[str, JsonValue] = {}
    content = args.get("content")
    if content is not None:
        if not isinstance(content, str):
            content = str(content) if isinstance(content, int | float) and \
                not isinstance(content, bool) else None
            if content is None:
                raise HostCallError("content must be a string")
        if len(content) > MAX_CONTENT:
            raise HostCallError(f"content is {len(content)} characters; at most {MAX_CONTENT}")
        body["content"] = content
    embeds = args.get("embeds")
    if embeds is not None:
        if isinstance(embeds, dict) and not embeds:
            embeds = []  # an empty Lua table
        if not isinstance(embeds, list) or not all(isinstance(e, dict) for e in embeds):
            raise HostCallError("embeds must be a list of embed tables")
        if len(embeds) > MAX_EMBEDS:
            raise HostCallError(f"{len(embeds)} embeds; at most {MAX_EMBEDS}")
        chars = sum(_embed_chars(embed) for embed in embeds if isinstance(embed, dict))
        if chars > MAX_EMBED_CHARS:
            raise HostCallError(f"the embeds hold {chars} characters; at most {MAX_EMBED_CHARS}")
        body["embeds"] = embeds
    components = args.get("components")
    if components is not None:
        if isinstance(components, dict) and not components:
            components = []
        if not isinstance(components, list):
            raise HostCallError("components must be a list of component tables")
        body["components"] = components
    if need_some and not any(key in body for key in ("content", "embeds", "components")):
        raise HostCallError("content, embeds or components is required")
    if ephemeral:
        body["flags"] = 64
    return body
