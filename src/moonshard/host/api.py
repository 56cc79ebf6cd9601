"""What a template can call: host capabilities, each a small object handed to one handler run.

A template's call such as ``ctx.kv.get("k")`` leaves the Lua VM as a host request
``("kv", "get", ["k", None])`` and is answered by the capability registered under ``"kv"``.
Capabilities raise ``HostCallError`` (or ``LimitExceeded``) for errors the template should see;
the message becomes a Lua error at the template's line.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from moonshard.values import JsonValue

__all__ = ["Capability", "RunScope"]


class Capability(abc.ABC):
    """One family of host calls (``kv``, ``events``, ``discord``) for one handler run."""

    @abc.abstractmethod
    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        """Runs ``op`` with the template's arguments (missing trailing arguments are None)."""


class RunScope(abc.ABC):
    """The transactional side of a capability: what it does when the handler run ends."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Makes the run's effects durable. Called once, only if the handler succeeded."""

    @abc.abstractmethod
    async def rollback(self) -> None:
        """Discards the run's effects. Called once, if the handler failed."""
