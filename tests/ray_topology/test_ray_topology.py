"""The ray topology on one local Ray: the engine's behaviour, routing, order, supervision."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray

from moonshard import Engine, Event, TenantId
from moonshard.errors import ConfigurationError, TemplateError, WorkerCrashed
from moonshard.limits import Limits
from moonshard.tenants import worker_index
from moonshard.timers.service import TimerConfig
from moonshard.topology.ray import RayOptions
from moonshard.topology.supervisor import RestartPolicy
from tests.support import Logs, eventually

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.usefixtures("local_ray")]

# With two workers, guild:1 and guild:2 share worker 0; guild:(1 << 22) is on worker 1.
A, B = TenantId.guild(1), TenantId.guild(2)
ON_WORKER_1 = TenantId.guild(1 << 22)
FAST = TimerConfig(backoff=(0.05,) * 6, window_seconds=5.0)
OPTIONS = RayOptions(num_cpus=1.0, start_timeout_seconds=60.0)

COUNTER = """
n = 0
return {
  COUNT = function(ctx, event)
    n = n + 1
    ctx.kv.incr("acks")
    return {n = n, i = event.data.i}
  end,
  SPIN = function(ctx, event)
    local until_ = os.clock() + event.data.seconds
    while os.clock() < until_ do end
    return "spun"
  end,
  ARM = function(ctx, event) ctx.kv.set(event.data.key, "v", {ttl = event.data.ttl}) end,
  KeyExpiry = function(ctx, event)
    print("expired", event.data.key)
    ctx.kv.set("fired:" .. event.data.key, true)
  end,
  BIG = function(ctx, event) return string.rep("x", 100) end,
}
"""


@pytest.fixture
async def engine(postgres: str) -> AsyncIterator[Engine]:
    async with Engine.open(postgres, topology="ray", workers=2, ray=OPTIONS,
                           limits=Limits(cpu_seconds=3), timers=FAST, log=Logs()) as running:
        yield running


async def kv_value(engine: Engine, tenant: TenantId, key: str) -> Any:
    record = await engine.store.kv.get(tenant, "default", key, now=time.time())
    return None if record is None else record.value


def slot_actor(engine: Engine, tenant: TenantId) -> Any:
    index = worker_index(tenant, len(engine.pool.workers))
    name = f"moonshard-{engine.pool._cluster.pool_id}-worker-{index}"
    return ray.get_actor(name, namespace=OPTIONS.namespace)


async def test_dispatch_templates_and_kv_through_ray_actors(engine: Engine) -> None:
    saved = await engine.templates.put(A, "counter", {"init.lua": COUNTER})
    assert saved.events == ("ARM", "BIG", "COUNT", "KeyExpiry", "SPIN")
    results = await engine.dispatch(A, Event("COUNT", {"i": 0}))
    assert [r.to_json() for r in results] == [
        {"template": "counter", "ok": True, "value": {"n": 1, "i": 0}}]
    assert await kv_value(engine, A, "acks") == 1
    # The pool's connection note says which Ray it used (here: the tests' own).
    assert engine.pool.placement_note is not None
    assert await engine.templates.delete(A, "counter") is True
    assert await engine.dispatch(A, Event("COUNT", {"i": 1})) == []


async def test_errors_keep_their_types_across_the_actor_hop(engine: Engine) -> None:
    with pytest.raises(TemplateError) as caught:
        await engine.templates.put(A, "broken", {"init.lua": "return {\n X = function( end }"})
    assert (caught.value.file, caught.value.line) == ("init.lua", 2)
    await engine.templates.put(A, "spin", {"init.lua": COUNTER})
    results = await engine.dispatch(A, Event("SPIN", {"seconds": 10}))
    assert not results[0].ok
    assert results[0].limit == "cpu"


async def test_routing_and_per_tenant_order(engine: Engine) -> None:
    for tenant in (A, B, ON_WORKER_1):
        await engine.templates.put(tenant, "counter", {"init.lua": COUNTER})
    replies = await asyncio.gather(*(
        engine.dispatch(tenant, Event("COUNT", {"i": i}))
        for i in range(60) for tenant in (A, B, ON_WORKER_1)))
    for offset, tenant in enumerate((A, B, ON_WORKER_1)):
        values = [reply[0].value for reply in replies[offset::3]]
        assert values == [{"n": i + 1, "i": i} for i in range(60)], tenant
    statuses = await engine.status()
    assert [status["index"] for status in statuses] == [0, 1]
    # A and B live on worker 0, ON_WORKER_1 on worker 1: each actor holds its own tenants.
    assert [status["tenants"] for status in statuses] == [2, 1]
    for status in statuses:
        assert status["up"]
        assert status["healthy"]
        assert status["node"] is not None
        assert status["pid"] is None  # never a pid to signal from here


async def test_a_killed_actor_is_replaced_and_nothing_acknowledged_is_lost(
        engine: Engine) -> None:
    await engine.templates.put(A, "counter", {"init.lua": COUNTER})
    worker = engine.pool.worker_for(A)
    node_before = worker.health()["node"]
    acknowledged = 0
    for i in range(10):
        await engine.dispatch(A, Event("COUNT", {"i": i}))
        acknowledged += 1
    await engine.dispatch(A, Event("ARM", {"key": "soon", "ttl": 2.0}))
    running = asyncio.create_task(engine.dispatch(A, Event("SPIN", {"seconds": 1.5})))
    await asyncio.sleep(0.5)
    queued = [asyncio.create_task(engine.dispatch(A, Event("COUNT", {"i": i})))
              for i in range(3)]
    await asyncio.sleep(0.1)
    ray.kill(slot_actor(engine, A), no_restart=False)
    with pytest.raises(WorkerCrashed, match="crashed"):
        await running
    # The queued events had not started: the successor runs them, in order, on a fresh VM.
    replies = await asyncio.gather(*queued)
    assert [reply[0].value for reply in replies] == [{"n": i + 1, "i": i} for i in range(3)]
    acknowledged += 3
    assert worker.restart_count == 1
    assert worker.health()["node"] != node_before  # another process (pid) took the slot
    # Every acknowledged write is in the store, and the expiry armed before the kill fires
    # from the successor.
    assert await kv_value(engine, A, "acks") == acknowledged

    async def fired() -> bool:
        return await kv_value(engine, A, "fired:soon") is True
    await eventually(fired, within=30)
    assert await kv_value(engine, A, "soon") is None


async def test_a_frozen_actor_misses_its_heartbeat_and_is_replaced(postgres: str) -> None:
    from moonshard.topology.process import Liveness

    async with Engine.open(postgres, topology="ray", workers=1, ray=OPTIONS,
                           liveness=Liveness(interval=0.2, deadline=1.0),
                           restart_policy=RestartPolicy(), log=Logs()) as engine:
        await engine.templates.put(A, "counter", {"init.lua": COUNTER})
        worker = engine.pool.workers[0]
        handle = worker.current
        assert handle is not None
        # Freeze the actor's loop from inside (a sync sleep holds its one loop).
        slot_actor(engine, A).__ray_call__.remote(lambda actor: time.sleep(30))

        async def replaced() -> bool:
            return worker.current is not None and worker.current is not handle
        await eventually(replaced, within=60)
        assert "heartbeat" in (worker.last_exit or "") or "answering" in (worker.last_exit or "")
        results = await engine.dispatch(A, Event("COUNT", {"i": 0}))
        assert results[0].value == {"n": 1, "i": 0}


async def test_sqlite_is_refused_in_one_line(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="the ray topology needs PostgreSQL"):
        async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}", topology="ray"):
            pass


# Quadratic backtracking in C: the guard lets one repetition through, the watchdog stops it.
STUCK_IN_C = """
return {STUCK = function() return string.rep("a", 400000):find("a-b") end,
        OK = function() print("still here"); return "ok" end}
"""


async def test_the_watchdog_ends_an_actor_stuck_in_c_and_its_successor_answers(
        postgres: str) -> None:
    logs = Logs()
    # The pattern guard is raised so that a call can get stuck in C: the case the wall-clock
    # kill is the last resort for.
    async with Engine.open(postgres, topology="ray", workers=1, ray=OPTIONS, log=logs,
                           limits=Limits(cpu_seconds=0.5, pattern_steps=10**13)) as engine:
        for tenant in (A, B):
            await engine.templates.put(tenant, "t", {"init.lua": STUCK_IN_C})
        with pytest.raises(WorkerCrashed, match="watchdog") as crash:
            await engine.dispatch(A, Event("STUCK", {}))
        assert crash.value.stuck is not None
        assert crash.value.stuck.startswith(str(A))
        # The successor takes the slot's other tenants; their log lines reach the owner.
        assert (await engine.dispatch(B, Event("OK", {})))[0].value == "ok"
        assert engine.pool.workers[0].restart_count == 1
        assert logs.messages("still here")
