"""What the sandbox needs from its host: something that answers a template's host requests.

A template's call such as ``ctx.kv.get("k")`` leaves the Lua VM as a host request
``("kv", "get", ["k", None])``; the sandbox's driver hands it to the ``Capability`` registered
under ``"kv"`` and resumes the template with the answer. This module imports nothing but plain
values, so the sandbox depends on no implementation.
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


HostAnswerer = Mapping[str, Capability]
"""What the driver answers host requests from: a capability per family."""
