"""The host side of a handler run: capabilities, and how their effects reach the one commit.

A capability (``contracts.sandbox.Capability``) answers one family of a template's host calls.
A capability never writes anything itself during the run: what it would change it buffers,
and hands over as ``RunEffects`` when the run ends (``RunScope``). The handler runner commits
the effects of all capabilities of one run in one store transaction.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from moonshard.contracts.sandbox import Capability, HostAnswerer

if TYPE_CHECKING:
    from moonshard.store.api import RunEffects

__all__ = ["Capability", "HostAnswerer", "RunScope"]


class RunScope(abc.ABC):
    """The transactional side of a capability: what it hands over when the handler run ends."""

    @abc.abstractmethod
    def take_effects(self) -> RunEffects:
        """The run's buffered effects, for the one commit of the run. Ends the scope: later
        calls of the capability are refused. Called once, only if the handler succeeded."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Forgets the run's effects (the handler failed). Ends the scope."""
