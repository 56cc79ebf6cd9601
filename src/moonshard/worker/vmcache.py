"""Which tenants of a worker keep a VM: a cap on resident VMs (least recently used go first)
and eviction of VMs, then of whole tenants, that sat idle."""

from __future__ import annotations

import time
from collections.abc import Iterable

from moonshard.worker.actor import TenantActor

__all__ = ["VMCachePolicy"]


class VMCachePolicy:
    """Decides over a worker's actors; only idle actors (nothing queued or running) lose a VM."""

    __slots__ = ("idle_seconds", "max_resident")

    def __init__(self, max_resident: int, idle_seconds: float) -> None:
        self.max_resident = max_resident
        self.idle_seconds = idle_seconds

    @property
    def period(self) -> float:
        """How often ``evict_idle`` should run."""
        return max(0.05, min(self.idle_seconds / 4, 30.0))

    def make_room(self, actors: Iterable[TenantActor]) -> None:
        """Before a VM is built: evicts the least recently used idle VMs past the cap."""
        resident = [actor for actor in actors if actor.vm is not None]
        excess = len(resident) - self.max_resident + 1
        if excess <= 0:
            return
        idle = sorted((actor for actor in resident if actor.idle),
                      key=lambda actor: actor.last_used)
        for actor in idle[:excess]:
            actor.discard_vm()

    def evict_idle(self, actors: Iterable[TenantActor]) -> tuple[int, list[TenantActor]]:
        """Discards VMs unused for ``idle_seconds``; gives how many went, and the actors unused
        for twice that, whose owner forgets them (their mailbox and cached template set)."""
        now = time.monotonic()
        evicted = 0
        forget: list[TenantActor] = []
        for actor in actors:
            if not actor.idle:
                continue
            idle = now - actor.last_used
            if actor.vm is not None and idle > self.idle_seconds:
                actor.discard_vm()
                evicted += 1
            elif actor.vm is None and idle > 2 * self.idle_seconds:
                forget.append(actor)
        return evicted, forget
