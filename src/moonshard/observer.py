"""The hook an ``Engine`` calls around each dispatch: metrics and accounting plug in here.

A middleware hook in dramatiq's sense: the engine tells an observer what happened and never
depends on what the observer does with it. ``moonshard.server.metrics.Metrics`` is the
observer the service uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from moonshard.contracts.worker import DispatchReply
    from moonshard.events import Event
    from moonshard.tenants import TenantId

__all__ = ["DispatchObserver"]


class DispatchObserver(Protocol):
    """Told about every dispatch an engine runs, awaited or not, once it is over.

    Called on the engine's event loop; it must return quickly and must not raise.
    """

    def dispatch_finished(
        self, tenant: TenantId, event: Event, reply: DispatchReply | None,
        error: BaseException | None, seconds: float,
    ) -> None:
        """``reply`` when the worker answered, else the ``error`` the dispatch raised."""
