"""What the sandbox needs from its host: something that answers a template's host requests.

A template's call such as ``ctx.kv.get("k")`` leaves the Lua VM as a host request
``("kv", "get", ["k", None])``; the sandbox's driver hands it to the ``Capability`` registered
under ``"kv"`` and resumes the template with the answer. A capability that can answer some calls
at once, without waiting (``kv.get`` from an SQLite reader owned by the Lua thread), offers
``answer_now``: the sandbox asks it first, on the Lua thread, inside the run's step. This module
imports nothing but plain values, so the sandbox depends on no implementation.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from moonshard.values import JsonValue

__all__ = ["Capability", "HostAnswerer"]


class Capability(abc.ABC):
    """One family of host calls (``kv``, ``events``, ``discord``) for one handler run.

    ``call`` raises ``HostCallError`` (or ``LimitExceeded``, ``ValueConversionError``) for an
    error the template should see: the message becomes a Lua error at the template's line.
    Any other exception is a bug of the host and fails the run.
    """

    @abc.abstractmethod
    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        """Runs ``op`` with the template's arguments (missing trailing arguments are None)."""

    def answers_now(self, op: str) -> bool:
        """Whether ``answer_now`` may answer ``op`` (asked before the arguments are read, so
        a call that always waits pays nothing more)."""
        return False

    def answer_now(self, op: str, args: Sequence[JsonValue]) -> tuple[JsonValue] | None:
        """``(answer,)`` when ``op`` can be answered at once on the calling thread, or None
        to have ``call`` answer it (the default: every call waits).

        It runs on the Lua thread inside the run's step, so it must never wait for the event
        loop. It raises what ``call`` would raise, for the same arguments, and has the same
        effects; when it answers None it must have had no effect at all (``call`` follows).
        """
        return None


HostAnswerer = Mapping[str, Capability]
"""What the driver answers host requests from: a capability per family."""
