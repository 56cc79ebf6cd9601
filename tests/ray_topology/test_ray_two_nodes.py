"""The ray topology on a two-node Ray cluster on this machine (``ray.cluster_utils``): slots
land on both nodes, and losing a node is survived."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from moonshard import Engine, Event, TenantId
from moonshard.limits import Limits
from moonshard.tenants import worker_index
from moonshard.timers.service import TimerConfig
from moonshard.topology.ray import RayOptions
from tests.support import Logs, eventually

pytestmark = [pytest.mark.ray, pytest.mark.postgres]

FAST = TimerConfig(backoff=(0.05,) * 6, window_seconds=5.0)
# Half a CPU each on one-CPU nodes: spread over both, and the survivor has room for both.
OPTIONS = RayOptions(num_cpus=0.5, start_timeout_seconds=90.0)

COUNTER = """
return {
  COUNT = function(ctx, event) return ctx.kv.incr("acks") end,
  ARM = function(ctx, event) ctx.kv.set(event.data.key, "v", {ttl = event.data.ttl}) end,
  KeyExpiry = function(ctx, event) ctx.kv.set("fired:" .. event.data.key, true) end,
}
"""


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
async def engine(two_nodes: Cluster, postgres: str) -> AsyncIterator[Engine]:
    async with Engine.open(postgres, topology="ray", workers=2, ray=OPTIONS, timers=FAST,
                           limits=Limits(cpu_seconds=3), log=Logs()) as running:
        yield running


async def kv_value(engine: Engine, tenant: TenantId, key: str) -> Any:
    record = await engine.store.kv.get(tenant, "default", key, now=time.time())
    return None if record is None else record.value


def node_id_of(engine: Engine, index: int) -> str:
    worker = engine.pool.workers[index]
    assert worker.current is not None
    placement: dict[str, Any] = worker.current._placement  # type: ignore[attr-defined]
    return str(placement["node_id"])


async def test_slots_land_on_both_nodes_and_a_lost_node_is_survived(
        two_nodes: Cluster, engine: Engine) -> None:
    tenants = [TenantId.guild(index << 22) for index in range(2)]
    assert [worker_index(tenant, 2) for tenant in tenants] == [0, 1]
    nodes = {node_id_of(engine, 0), node_id_of(engine, 1)}
    assert len(nodes) == 2  # SPREAD: one slot on each node
    for tenant in tenants:
        await engine.templates.put(tenant, "counter", {"init.lua": COUNTER})
        for _ in range(5):
            await engine.dispatch(tenant, Event("COUNT", {}))
        await engine.dispatch(tenant, Event("ARM", {"key": "later", "ttl": 3.0}))
    # Remove the worker node (not the head, where the driver's cluster state lives).
    worker_node = next(node for node in two_nodes.worker_nodes)
    lost = next(index for index in range(2) if node_id_of(engine, index) == worker_node.node_id)
    slot = engine.pool.workers[lost]
    two_nodes.remove_node(worker_node)

    async def replaced() -> bool:
        return slot.restart_count >= 1 and slot.health()["up"]
    await eventually(replaced, within=120, every=0.2)
    assert node_id_of(engine, lost) == two_nodes.head_node.node_id
    for tenant in tenants:
        assert await engine.dispatch(tenant, Event("COUNT", {}))  # both slots answer again
        assert await kv_value(engine, tenant, "acks") == 6  # no acknowledged write lost

    async def fired() -> bool:
        return all([await kv_value(engine, tenant, "fired:later") is True
                    for tenant in tenants])
    await eventually(fired, within=60, every=0.2)
