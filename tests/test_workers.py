"""The worker behavioural suite: the same tests against the thread and process topologies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moonshard import Engine, Event, TenantId
from moonshard.errors import Overloaded, TemplateError, TenantQuarantined, WorkerCrashed
from moonshard.limits import Limits
from moonshard.topology.supervisor import Quarantine, RestartPolicy
from tests.support import database_urls

# With two workers, guild:1 and guild:2 share worker 0 ((id >> 22) % 2 == 0).
A, B = TenantId.guild(1), TenantId.guild(2)
ON_WORKER_1 = TenantId.guild(1 << 22)

COUNTER = """
n = 0
return {
  COUNT = function(ctx, event) n = n + 1; return {n = n, i = event.data.i} end,
  SPIN = function(ctx, event)
    local until_ = os.clock() + event.data.seconds
    while os.clock() < until_ do end
    return "spun"
  end,
  NOTHING = function() return "ok" end,
}
"""

# Quadratic backtracking in C: the guard lets one repetition through, the watchdog stops it.
STUCK_IN_C = """
return {STUCK = function() return string.rep("a", 400000):find("a-b") end,
        OK = function() return "ok" end}
"""


@pytest.fixture(params=["thread", "process"])
def topology(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async for url in database_urls(str(request.param), tmp_path):
        yield url


class WriteLock:
    """Another connection holding what A's commit of key "k" needs: SQLite's write lock, or
    on PostgreSQL an uncommitted row of that key (the commit waits on its primary key)."""

    def __init__(self, database: str) -> None:
        self._database = database
        self._sqlite: Any = None
        self._postgres: Any = None

    async def take(self) -> None:
        if self._database.startswith("sqlite"):
            import sqlite3

            self._sqlite = sqlite3.connect(self._database.removeprefix("sqlite:///"),
                                           isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
            return
        import asyncpg

        url, _, schema = self._database.partition("?schema=")
        self._postgres = await asyncpg.connect(url, server_settings={"search_path": schema})
        await self._postgres.execute("BEGIN")
        await self._postgres.execute(
            "INSERT INTO kv (tenant_kind, tenant_id, scope, key, value, version, created_at,"
            " updated_at) VALUES ('guild', '1', 'default', 'k', '0', 1, 0, 0)")

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("COMMIT")
            self._sqlite.close()
        if self._postgres is not None:
            await self._postgres.execute("ROLLBACK")
            await self._postgres.close()


@pytest.fixture
async def engine(topology: str, database: str) -> AsyncIterator[Engine]:
    async with Engine.open(database, topology=topology, workers=2,  # type: ignore[arg-type]
                           limits=Limits(cpu_seconds=3)) as running:
        yield running


async def test_dispatch_and_template_management(engine: Engine) -> None:
    saved = await engine.templates.put(A, "counter", {"init.lua": COUNTER})
    assert saved.events == ("COUNT", "NOTHING", "SPIN")
    assert saved.version == 1
    assert [t.name for t in await engine.templates.list(A)] == ["counter"]
    results = await engine.dispatch(A, Event("COUNT", {"i": 0}))
    assert [r.to_json() for r in results] == [
        {"template": "counter", "ok": True, "value": {"n": 1, "i": 0}}]
    assert await engine.templates.delete(A, "counter") is True
    assert await engine.dispatch(A, Event("COUNT", {"i": 1})) == []
    assert await engine.templates.delete(A, "counter") is False


async def test_refused_templates_raise_template_error(engine: Engine) -> None:
    with pytest.raises(TemplateError) as caught:
        await engine.templates.put(A, "broken", {"init.lua": "return {\n X = function( end }"})
    assert caught.value.file == "init.lua"
    assert caught.value.line == 2
    assert await engine.templates.list(A) == []


async def test_events_of_one_tenant_run_in_arrival_order(engine: Engine) -> None:
    await engine.templates.put(A, "counter", {"init.lua": COUNTER})
    replies = await asyncio.gather(
        *(engine.dispatch(A, Event("COUNT", {"i": i})) for i in range(60)))
    values = [reply[0].value for reply in replies]
    assert values == [{"n": i + 1, "i": i} for i in range(60)]


async def test_a_spinning_tenant_does_not_hold_up_another_on_its_worker(engine: Engine) -> None:
    for tenant in (A, B):
        await engine.templates.put(tenant, "counter", {"init.lua": COUNTER})
    assert engine.pool.worker_for(A) is engine.pool.worker_for(B)
    finished: list[str] = []

    async def run(tenant: TenantId, event: Event, label: str) -> None:
        await engine.dispatch(tenant, event)
        finished.append(label)

    spin = asyncio.create_task(run(A, Event("SPIN", {"seconds": 2.0}), "spin"))
    await asyncio.sleep(0.2)
    await asyncio.gather(*(run(B, Event("NOTHING"), f"b{i}") for i in range(5)))
    assert finished == [f"b{i}" for i in range(5)]
    await spin
    assert finished[-1] == "spin"


async def test_a_tenant_waiting_on_io_does_not_block_another(
    engine: Engine, database: str,
) -> None:
    await engine.templates.put(A, "writer", {"init.lua": """
        return {WRITE = function(ctx) ctx.kv.set("k", 1); return "written" end}"""})
    await engine.templates.put(B, "counter", {"init.lua": COUNTER})
    # Another connection holds what A's commit needs: it waits on real I/O.
    blocker = WriteLock(database)
    await blocker.take()
    finished: list[str] = []

    async def run(tenant: TenantId, name: str) -> None:
        await engine.dispatch(tenant, Event(name))
        finished.append(name)

    writer = asyncio.create_task(run(A, "WRITE"))
    await asyncio.sleep(0.3)
    await run(B, "NOTHING")
    assert finished == ["NOTHING"]
    await blocker.release()
    await writer
    assert finished == ["NOTHING", "WRITE"]


async def test_events_nobody_subscribes_to_are_dropped_before_any_vm(engine: Engine) -> None:
    await engine.templates.put(A, "counter", {"init.lua": COUNTER})
    await engine.templates.put(B, "counter", {"init.lua": COUNTER})
    assert await engine.dispatch(A, Event("UNHANDLED")) == []
    status = await engine.status()
    assert sum(worker["resident_vms"] for worker in status) == 0
    await engine.dispatch(A, Event("COUNT", {"i": 0}))
    status = await engine.status()
    assert sum(worker["resident_vms"] for worker in status) == 1


async def test_no_event_sees_two_template_versions(engine: Engine) -> None:
    def version(v: int) -> dict[str, str]:
        return {"init.lua": f"local lib = require('lib')\nreturn {{READ = function(ctx)\n"
                            f"  return {{init = {v}, lib = lib.v, set = ctx.template.version}}\n"
                            f"end}}",
                "lib.lua": f"return {{v = {v}}}"}

    await engine.templates.put(A, "versioned", version(0))

    async def saves() -> None:
        for v in range(1, 8):
            saved = await engine.templates.put(A, "versioned", version(v))
            # Once the save has returned, every later event sees it.
            seen = (await engine.dispatch(A, Event("READ")))[0].value
            assert isinstance(seen, dict)
            assert seen["init"] >= v
            assert seen["set"] >= saved.version

    async def reads() -> list[Any]:
        return [(await engine.dispatch(A, Event("READ")))[0].value for _ in range(40)]

    _, values = await asyncio.gather(saves(), reads())
    for value in values:
        assert value["init"] == value["lib"], value


async def test_idle_vms_are_evicted_and_rebuilt_transparently(
    topology: str, database: str,
) -> None:
    async with Engine.open(database, topology=topology, workers=1,  # type: ignore[arg-type]
                           idle_seconds=0.3) as engine:
        await engine.templates.put(A, "counter", {"init.lua": """
            n = 0
            return {
              COUNT = function(ctx) n = n + 1; return {n = n, kept = ctx.kv.incr("kept")} end,
              Startup = function(ctx, event) ctx.kv.set("reason", event.data.reason) end,
            }"""})
        first = (await engine.dispatch(A, Event("COUNT")))[0].value
        second = (await engine.dispatch(A, Event("COUNT")))[0].value
        assert (first, second) == ({"n": 1, "kept": 1}, {"n": 2, "kept": 2})
        for _ in range(100):
            if (await engine.status())[0]["resident_vms"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await engine.status())[0]["resident_vms"] == 0
        third = (await engine.dispatch(A, Event("COUNT")))[0].value
        assert third == {"n": 1, "kept": 3}  # a cold start: VM state gone, the store kept
        record = await engine.store.kv.get(A, "default", "reason", now=0)
        assert record is not None
        assert record.value == "vm_rebuilt"


async def test_startup_then_resume_keys_before_other_events(engine: Engine) -> None:
    source = """
        return {
          Startup = function(ctx, event) ctx.kv.incr("startups") ; return event.data.reason end,
          KeyResume = function(ctx, event)
            ctx.kv.set("resumed:" .. event.data.key, event.data.value)
          end,
          ARM = function(ctx) ctx.kv.set("job", {step = 3}, {resume = true}) end,
          READ = function(ctx)
            return {startups = ctx.kv.get("startups"), resumed = ctx.kv.get("resumed:job")}
          end,
          HOG = function() local t = {} for i = 1, 1e9 do t[i] = {} end end,
        }"""
    await engine.templates.put(A, "jobs", {"init.lua": source})
    await engine.dispatch(A, Event("ARM"))
    assert (await engine.dispatch(A, Event("READ")))[0].value == {"startups": 1}
    # Templates change: Startup again, then the resume key.
    await engine.templates.put(A, "jobs", {"init.lua": source + "\n-- v2"})
    assert (await engine.dispatch(A, Event("READ")))[0].value == {
        "startups": 2, "resumed": {"step": 3}}
    # A broken memory limit: the VM is rebuilt with Startup and KeyResume first.
    hog = await engine.dispatch(A, Event("HOG"))
    assert hog[0].error is not None
    assert hog[0].error.endswith("memory limit exceeded")
    assert (await engine.dispatch(A, Event("READ")))[0].value == {
        "startups": 3, "resumed": {"step": 3}}


async def test_a_full_mailbox_is_a_clear_overload_error(topology: str, database: str) -> None:
    async with Engine.open(database, topology=topology, workers=1,  # type: ignore[arg-type]
                           mailbox_size=3, limits=Limits(cpu_seconds=3)) as engine:
        await engine.templates.put(A, "counter", {"init.lua": COUNTER})
        spin = asyncio.create_task(engine.dispatch(A, Event("SPIN", {"seconds": 1.0})))
        await asyncio.sleep(0.2)
        outcomes = await asyncio.gather(
            *(engine.dispatch(A, Event("NOTHING")) for _ in range(10)), return_exceptions=True)
        overloaded = [o for o in outcomes if isinstance(o, Overloaded)]
        assert overloaded
        assert "events queued" in str(overloaded[0])
        assert len(overloaded) < 10
        await spin


async def test_two_engines_in_one_process_do_not_interfere(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'one.db'}", workers=1) as one, \
            Engine.open(f"sqlite:///{tmp_path / 'two.db'}", workers=1) as two:
        await one.templates.put(A, "counter", {"init.lua": COUNTER})
        await two.templates.put(A, "other", {"init.lua": "return {COUNT = function() "
                                                        "return 'two' end}"})
        assert (await one.dispatch(A, Event("COUNT", {"i": 0})))[0].value == {"n": 1, "i": 0}
        assert (await two.dispatch(A, Event("COUNT")))[0].value == "two"
        assert [t.name for t in await one.templates.list(A)] == ["counter"]


# -- the process topology: real SIGKILL, the hard watchdog, supervision ---------------------

@pytest.fixture
async def processes(database: str) -> AsyncIterator[Engine]:
    async with Engine.open(
        # The pattern guard is raised so that a call can get stuck in C: the case the
        # wall-clock kill is the last resort for.
        database, topology="process", workers=2,
        limits=Limits(cpu_seconds=0.5, pattern_steps=10**13),
        restart_policy=RestartPolicy(budget=3, window_seconds=30.0, max_backoff=1.0),
        quarantine=Quarantine(crashes=2, cool_down_seconds=60.0),
    ) as running:
        yield running


async def test_a_killed_worker_is_replaced_and_its_queued_events_delivered(
    processes: Engine,
) -> None:
    engine = processes
    await engine.templates.put(A, "counter", {"init.lua": COUNTER})
    worker = engine.pool.worker_for(A)
    assert worker.current is not None
    old_pid = worker.current.pid
    assert old_pid is not None
    running = asyncio.create_task(engine.dispatch(A, Event("SPIN", {"seconds": 0.4})))
    await asyncio.sleep(0.15)
    queued = [asyncio.create_task(engine.dispatch(A, Event("COUNT", {"i": i})))
              for i in range(3)]
    await asyncio.sleep(0.05)
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match="crashed"):
        await running
    replies = await asyncio.gather(*queued)
    # Delivered to the successor, in order, on a fresh VM.
    assert [reply[0].value for reply in replies] == [{"n": i + 1, "i": i} for i in range(3)]
    assert worker.restart_count == 1
    assert worker.current is not None
    assert worker.current.pid != old_pid


async def test_the_watchdog_kills_a_call_stuck_in_c_and_others_are_answered(
    processes: Engine,
) -> None:
    engine = processes
    await engine.templates.put(A, "stuck", {"init.lua": STUCK_IN_C})
    await engine.templates.put(B, "counter", {"init.lua": COUNTER})
    stuck = asyncio.create_task(engine.dispatch(A, Event("STUCK")))
    await asyncio.sleep(0.3)
    # B shares A's worker and is answered while A is stuck.
    assert (await engine.dispatch(B, Event("NOTHING")))[0].value == "ok"
    with pytest.raises(WorkerCrashed) as crash:
        await stuck
    assert crash.value.stuck is not None
    assert crash.value.stuck.startswith(str(A))
    assert "watchdog" in str(crash.value)
    # The worker is back, and A's other handlers work on the rebuilt VM.
    assert (await engine.dispatch(A, Event("OK")))[0].value == "ok"
    assert (await engine.dispatch(B, Event("NOTHING")))[0].value == "ok"


async def test_repeated_crashes_quarantine_only_the_guilty_tenant(processes: Engine) -> None:
    engine = processes
    await engine.templates.put(A, "stuck", {"init.lua": STUCK_IN_C})
    await engine.templates.put(B, "counter", {"init.lua": COUNTER})
    for _ in range(2):
        with pytest.raises(WorkerCrashed):
            await engine.dispatch(A, Event("STUCK"))
    with pytest.raises(TenantQuarantined, match="quarantined"):
        await engine.dispatch(A, Event("OK"))
    assert (await engine.dispatch(B, Event("NOTHING")))[0].value == "ok"
    assert str(A) in engine.pool.quarantine.quarantined()


async def test_past_the_restart_budget_a_worker_reports_unhealthy(processes: Engine) -> None:
    engine = processes
    await engine.templates.put(ON_WORKER_1, "counter", {"init.lua": COUNTER})
    worker = engine.pool.worker_for(ON_WORKER_1)
    for _ in range(4):
        assert (await engine.dispatch(ON_WORKER_1, Event("NOTHING")))[0].value == "ok"
        handle = worker.current
        assert handle is not None
        assert handle.pid is not None
        os.kill(handle.pid, signal.SIGKILL)
        await handle.wait_exit()
    assert worker.restart_count >= 3
    assert worker.health()["healthy"] is False
    # It keeps trying: the slot comes back and answers.
    assert (await engine.dispatch(ON_WORKER_1, Event("NOTHING")))[0].value == "ok"


async def test_thread_topology_abandons_a_tenant_stuck_past_the_hard_limit(
        database: str) -> None:
    # A thread cannot be killed: the stuck tenant is quarantined and its VM abandoned to the
    # stuck call, and the worker's other tenants carry on meanwhile.
    # A raised pattern guard lets a call get stuck in C for longer than the hard limit.
    async with Engine.open(database, topology="thread", workers=1,
                           limits=Limits(cpu_seconds=0.3, pattern_steps=10**13),
                           quarantine=Quarantine(cool_down_seconds=3.0)) as engine:
        await engine.templates.put(A, "stuck", {"init.lua": """
            n = 0
            return {
              COUNT = function() n = n + 1; return n end,
              STUCK = function() return string.rep("a", 60000):find("a-b") end,
            }"""})
        await engine.templates.put(B, "counter", {"init.lua": COUNTER})
        assert (await engine.dispatch(A, Event("COUNT")))[0].value == 1
        assert (await engine.dispatch(A, Event("COUNT")))[0].value == 2
        with pytest.raises(TenantQuarantined, match="stuck in one Lua call"):
            await engine.dispatch(A, Event("STUCK"))
        # A's call is still running in C on one Lua thread; B is served on another.
        assert (await engine.dispatch(B, Event("COUNT", {"i": 1})))[0].value == {"n": 1, "i": 1}
        assert (await engine.tenant_status(A))["quarantined"]
        with pytest.raises(TenantQuarantined):
            await engine.dispatch(A, Event("COUNT"))
        while True:  # the cool-down ends: A comes back with a fresh VM
            try:
                assert (await engine.dispatch(A, Event("COUNT")))[0].value == 1
                break
            except TenantQuarantined:
                await asyncio.sleep(0.2)


async def test_the_least_recently_used_idle_vm_goes_past_the_cap(
        topology: str, database: str) -> None:
    tenants = [TenantId.guild(n) for n in (1, 2, 3)]
    async with Engine.open(database, topology=topology, workers=1,  # type: ignore[arg-type]
                           max_resident_vms=2) as engine:
        for tenant in tenants:
            await engine.templates.put(tenant, "counter", {"init.lua": COUNTER})
        first, _second, _third = tenants
        for tenant in tenants:
            assert (await engine.dispatch(tenant, Event("NOTHING")))[0].ok

        async def resident() -> list[bool]:
            return [(await engine.tenant_status(tenant))["resident"] for tenant in tenants]

        assert await resident() == [False, True, True]  # the first was used least recently
        assert (await engine.dispatch(first, Event("COUNT", {"i": 1})))[0].value == {
            "n": 1, "i": 1}  # rebuilt: its Lua globals start over
        assert await resident() == [True, False, True]
        assert (await engine.status())[0]["resident_vms"] == 2
