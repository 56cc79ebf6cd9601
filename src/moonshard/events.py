"""Events: what a template's handlers run on."""

from __future__ import annotations

import dataclasses
import os
import time

from moonshard.values import JsonField, JsonValue

__all__ = ["Event", "HandlerResult"]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event for one tenant. ``id`` stays the same across redeliveries of the same event."""

    name: str
    data: JsonField = None
    author: str | None = None
    # 128 random bits as hex: unique, and a quarter of uuid4()'s cost on every event.
    id: str = dataclasses.field(default_factory=lambda: os.urandom(16).hex())
    at: float = dataclasses.field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 100:
            raise ValueError("an event name is a non-empty string of at most 100 characters")
        if self.author is not None and not (isinstance(self.author, str) and self.author.isdigit()):
            raise ValueError("an event author is a user snowflake written as decimal digits")


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerResult:
    """What one template's handler gave for one event."""

    template: str
    ok: bool
    value: JsonField = None
    error: str | None = None
    traceback: str | None = None
    # Which limit was broken, when one was: "memory", "cpu" or "wall".
    limit: str | None = None

    def to_json(self) -> dict[str, JsonValue]:
        if self.ok:
            return {"template": self.template, "ok": True, "value": self.value}
        return {"template": self.template, "ok": False, "error": self.error}
