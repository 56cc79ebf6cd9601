"""A pool of supervised workers, routed by tenant (Discord's shard formula for snowflakes).

The topology decides what an incarnation is: a thread, a child process, or a named Ray actor
on whichever node of a Ray cluster its scheduler picks (``topology.ray``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from moonshard.contracts.worker import (
    Reply,
    Request,
    Status,
    TenantLog,
    WorkerConfig,
    WorkerHandle,
)
from moonshard.tenants import TenantId, worker_index
from moonshard.topology.process import Liveness, ProcessWorker
from moonshard.topology.ray.cluster import RayCluster
from moonshard.topology.ray.handle import RaySlot, RayWorker
from moonshard.topology.ray.options import RayOptions
from moonshard.topology.supervisor import Quarantine, RestartPolicy, SupervisedWorker
from moonshard.topology.thread import ThreadWorker

__all__ = ["Topology", "WorkerPool"]

Topology = Literal["thread", "process", "ray"]


class WorkerPool:
    """``workers`` supervised worker slots of one topology; a tenant always reaches the same."""

    def __init__(self, topology: Topology, configs: Sequence[WorkerConfig], log: TenantLog,
                 policy: RestartPolicy | None = None,
                 quarantine: Quarantine | None = None,
                 liveness: Liveness | None = None, ray: RayOptions | None = None) -> None:
        if topology not in ("thread", "process", "ray"):
            raise ValueError(f"unknown topology {topology!r}: expected thread, process or ray")
        if not configs:
            raise ValueError("a pool needs at least one worker")
        self.topology = topology
        self.quarantine = quarantine or Quarantine()
        self._log = log
        # Said by whoever started the pool: where its Ray is (None for the other topologies).
        self.placement_note: str | None = None
        # Ray itself is imported only when this connects (an optional extra).
        cluster = RayCluster(ray or RayOptions()) if topology == "ray" else None
        self._cluster = cluster

        def spawner(config: WorkerConfig) -> Any:
            slot = RaySlot(config.index, cluster.actor_name(config.index)) \
                if cluster is not None else None

            def spawn() -> WorkerHandle:
                if topology == "thread":
                    return ThreadWorker(config, log)
                if cluster is not None and slot is not None:
                    return RayWorker(config, log, cluster, slot, liveness)
                return ProcessWorker(config, log, liveness)
            return spawn

        self.workers = [
            SupervisedWorker(config.index, spawner(config), policy or RestartPolicy(),
                             self.quarantine)
            for config in configs
        ]

    async def start(self) -> None:
        if self._cluster is not None:
            self.placement_note = self._cluster.connect(len(self.workers))
        try:
            await asyncio.gather(*(worker.start() for worker in self.workers))
        except BaseException:
            await self.stop(0.0)
            raise

    def worker_for(self, tenant: TenantId) -> SupervisedWorker:
        return self.workers[worker_index(tenant, len(self.workers))]

    async def request(self, tenant: TenantId, request: Request) -> Reply:
        return await self.worker_for(tenant).request(request)

    async def status(self) -> list[dict[str, Any]]:
        async def one(worker: SupervisedWorker) -> dict[str, Any]:
            health = worker.health()
            if health["up"]:
                try:
                    status = await asyncio.wait_for(worker.request(Status()), 5.0)
                    health |= msgspec.structs.asdict(status)
                except Exception as error:
                    health["error"] = str(error)
            return health
        return list(await asyncio.gather(*(one(worker) for worker in self.workers)))

    async def stop(self, deadline: float) -> None:
        try:
            await asyncio.gather(*(worker.stop(deadline) for worker in self.workers))
        finally:
            if self._cluster is not None:
                self._cluster.disconnect()


