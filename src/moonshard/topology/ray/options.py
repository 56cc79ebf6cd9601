"""How the Ray topology reaches its cluster and places its actors (no Ray import here)."""

from __future__ import annotations

import dataclasses

__all__ = ["RayOptions"]


@dataclasses.dataclass(frozen=True, slots=True)
class RayOptions:
    """Where the cluster is and how each worker slot's actor is placed and fed.

    Nothing here is secret: these become actor names and options, which Ray shows to anyone
    who can see the cluster. The database URL travels only inside the actor's argument.
    """

    # "auto", "ray://host:10001" or "host:6379"; None starts a local Ray in this process.
    address: str | None = None
    namespace: str = "moonshard"
    # What each slot's actor reserves on its node (Ray's scheduling, not a limit).
    num_cpus: float = 1.0
    # Ray restarts a dead actor this many times (-1: always); the supervisor re-creates one
    # past that.
    max_restarts: int = -1
    # "SPREAD" places the slots on as many nodes as it can; "DEFAULT" packs them.
    scheduling_strategy: str = "SPREAD"
    # Calls sent per actor call at most, and how long the first waits for company (0: only
    # what arrives in the same loop turn, or while the previous batch is in flight).
    batch_size: int = 256
    batch_window_seconds: float = 0.0
    # How long a slot may take to be placed and answer (a cluster without room fails then).
    start_timeout_seconds: float = 120.0
    # A local Ray (no address): its CPUs (None: the machine's, at least one per worker) and
    # object store.
    local_cpus: int | None = None
    local_object_store_bytes: int = 200 * 1024 * 1024
