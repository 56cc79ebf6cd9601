"""Durable timers: key expiry, retries, resume keys, emitted and scheduled events.

On SQLite and PostgreSQL, through a real Engine; crashes with real processes and SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from moonshard import Engine, Event, TenantId
from moonshard.contracts.timers import TimerRef
from moonshard.limits import Limits
from moonshard.timers.delivery import stable_id
from moonshard.timers.service import TimerConfig, batches_by_tenant
from tests.support import Logs, database_urls, eventually

TENANT = TenantId.guild(7)
FAST = TimerConfig(backoff=(0.05, 0.05, 0.05, 0.05, 0.05, 0.05), window_seconds=5.0)

EXPIRY = """
return {
  ARM = function(ctx, event)
    ctx.kv.set(event.data.key, event.data.value or "v", {ttl = event.data.ttl})
  end,
  DELETE = function(ctx, event) return ctx.kv.delete(event.data.key) end,
  GET = function(ctx, event) return ctx.kv.get(event.data.key) end,
  KeyExpiry = function(ctx, event)
    print("expired", event.data.key, event.data.attempt, event.id)
    ctx.kv.incr("fired:" .. event.data.key)
    if event.data.key:find("^fail") then error("refusing " .. event.data.key) end
    if event.data.key:find("^keep") then ctx.kv.set(event.data.key, "kept") end
    if event.data.key:find("^slow") then
      local t = os.clock() + 3 while os.clock() < t do end
    end
    if event.data.key:find("^crash") then
      local t = os.clock() + 0.05 while os.clock() < t do end
    end
    -- Rewrites the key its value names (one that may come due in the same batch).
    if event.data.key:find("^rewriter") then ctx.kv.set(event.data.value, "rewritten") end
  end,
}
"""


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async for url in database_urls(str(request.param), tmp_path):
        yield url


def open_engine(database: str, logs: Logs, **options: Any) -> AbstractAsyncContextManager[Engine]:
    options.setdefault("topology", "thread")
    options.setdefault("workers", 1)
    options.setdefault("timers", FAST)
    return Engine.open(database, log=logs, **options)


async def kv_value(engine: Engine, key: str) -> Any:
    record = await engine.store.kv.get(TENANT, "default", key, now=time.time())
    return None if record is None else record.value


async def test_an_expiry_fires_once_and_deletes_the_key(database: str) -> None:
    logs = Logs()
    async with open_engine(database, logs) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        await engine.dispatch(TENANT, Event("ARM", {"key": "a", "ttl": 0.2}))

        async def fired_and_deleted() -> bool:
            row, _ = await engine.store.kv.load_row(TENANT, "default", "a")
            return await kv_value(engine, "fired:a") == 1 and row is None
        await eventually(fired_and_deleted)  # deleted, not only invisible
        await asyncio.sleep(0.5)
        assert await kv_value(engine, "fired:a") == 1
        assert len(logs.messages("expired\ta\t1")) == 1


async def test_an_expired_key_is_invisible_before_its_event_fires(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY.replace(
            "KeyExpiry", "NotKeyExpiry")})
        await engine.dispatch(TENANT, Event("ARM", {"key": "gone", "ttl": 0.1}))
        await asyncio.sleep(0.2)
        assert (await engine.dispatch(TENANT, Event("GET", {"key": "gone"})))[0].value is None


async def test_deleting_a_key_cancels_its_expiry(database: str) -> None:
    logs = Logs()
    async with open_engine(database, logs) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        await engine.dispatch(TENANT, Event("ARM", {"key": "b", "ttl": 0.3}))
        assert (await engine.dispatch(TENANT, Event("DELETE", {"key": "b"})))[0].value is True
        await asyncio.sleep(0.8)
        assert await kv_value(engine, "fired:b") is None


async def test_re_setting_a_key_moves_its_expiry(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        await engine.dispatch(TENANT, Event("ARM", {"key": "c", "ttl": 0.2}))
        await engine.dispatch(TENANT, Event("ARM", {"key": "c", "ttl": 1.5}))
        await asyncio.sleep(0.6)
        assert await kv_value(engine, "fired:c") is None

        async def fired() -> bool:
            return await kv_value(engine, "fired:c") == 1
        await eventually(fired)


async def test_a_failing_handler_is_retried_then_dead_lettered(database: str) -> None:
    logs = Logs()
    async with open_engine(database, logs) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        await engine.dispatch(TENANT, Event("ARM", {"key": "fail1", "ttl": 0.1}))

        async def dead() -> bool:
            return bool(logs.messages("dead letter"))
        await eventually(dead)
        await asyncio.sleep(0.1)
        attempts = logs.messages("expired\tfail1")
        # The first delivery and six retries, all with the same event id.
        assert [line.split("\t")[2] for line in attempts] == [str(n) for n in range(1, 8)]
        assert len({line.split("\t")[3] for line in attempts}) == 1
        assert "failed 7 times" in logs.messages("dead letter")[0]
        row, _ = await engine.store.kv.load_row(TENANT, "default", "fail1")
        assert row is None
        # The failed runs' writes were rolled back.
        assert await kv_value(engine, "fired:fail1") is None


async def test_a_key_changed_while_firing_survives(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        await engine.dispatch(TENANT, Event("ARM", {"key": "keep1", "ttl": 0.1}))

        async def fired() -> bool:
            return await kv_value(engine, "fired:keep1") == 1
        await eventually(fired)
        await asyncio.sleep(0.2)
        assert await kv_value(engine, "keep1") == "kept"


async def test_expiries_due_while_down_fire_after_restart(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        for i in range(20):
            await engine.dispatch(TENANT, Event("ARM", {"key": f"down{i}", "ttl": 0.5}))
    await asyncio.sleep(1.0)  # they come due while nothing runs
    async with open_engine(database, Logs()) as engine:
        async def all_fired() -> bool:
            values = [await kv_value(engine, f"fired:down{i}") for i in range(20)]
            return values == [1] * 20
        await eventually(all_fired)


async def test_a_backlog_batch_keeps_each_timers_own_outcome(database: str) -> None:
    """Due while down, so the restarted worker fires them in one batch of the tenant."""
    plain = [f"plain{i:02d}" for i in range(30)]
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        for key in [*plain, "fail1", "keep1"]:
            await engine.dispatch(TENANT, Event("ARM", {"key": key, "ttl": 0.5}))
        # The rewriter's handler sets the victim, due at the same time and read with it.
        await engine.dispatch(TENANT, Event("ARM", {"key": "rewriter", "value": "victim",
                                                    "ttl": 0.5}))
        await engine.dispatch(TENANT, Event("ARM", {"key": "victim", "ttl": 0.5}))
    await asyncio.sleep(1.0)
    logs = Logs()
    async with open_engine(database, logs) as engine:
        async def settled() -> bool:
            fired = [await kv_value(engine, f"fired:{key}") for key in [*plain, "rewriter"]]
            return fired == [1] * (len(plain) + 1) and bool(logs.messages("dead letter"))
        await eventually(settled)
        await asyncio.sleep(0.2)
        # Each plain key fired once and its row is gone.
        for key in plain:
            assert len(logs.messages(f"expired\t{key}\t")) == 1
            assert (await engine.store.kv.load_row(TENANT, "default", key))[0] is None
        # The failing one was retried alone, then dead-lettered; its writes rolled back.
        assert len(logs.messages("expired\tfail1\t")) == 7
        assert await kv_value(engine, "fired:fail1") is None
        assert (await engine.store.kv.load_row(TENANT, "default", "fail1"))[0] is None
        # Rewritten by its own handler, and by the rewriter's: both rows stay, unexpired.
        assert await kv_value(engine, "keep1") == "kept"
        assert await kv_value(engine, "victim") == "rewritten"
        assert logs.messages("expired\tvictim") == []
        assert await kv_value(engine, "fired:victim") is None
        (status,) = await engine.status()
        timers = status["timers"]
        # The 34 first firings went in far fewer mailbox jobs (one, and the six retries).
        assert timers["fired"] == len(plain) + 4
        assert timers["batches"] <= 10


QUIET = """
return {
  ARM = function(ctx, event) ctx.kv.set(event.data.key, "v", {ttl = event.data.ttl}) end,
  KeyExpiry = function(ctx, event)
    print("quiet", event.data.key, event.data.attempt)
    if event.data.key:find("^fail") then error("refusing " .. event.data.key) end
    if event.data.key:find("boom") then local s = string.rep("x", 1 << 30) end
    if event.data.key:find("note") then ctx.kv.set("noted", event.data.key) end
  end,
}
"""
SECOND = """
return {KeyExpiry = function(ctx, event) print("second", event.data.key) end}
"""


async def test_backlogged_handlers_without_host_calls_run_together_each_on_its_own(
    database: str,
) -> None:
    """Handlers that call nothing share Lua steps; one that breaks its VM's memory limit,
    one that fails, and one that calls the host in the middle change nothing for the rest."""
    early, late = [f"a{i:02d}" for i in range(10)], [f"z{i:02d}" for i in range(10)]
    plain = early + late
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "quiet", {"init.lua": QUIET})
        await engine.templates.put(TENANT, "second", {"init.lua": SECOND})
        # They come due in the order armed (each ttl counts from its own dispatch).
        for key in [*early, "b-boom", "fail1", "m-note", *late]:
            await engine.dispatch(TENANT, Event("ARM", {"key": key, "ttl": 0.5}))
    await asyncio.sleep(1.0)
    logs = Logs()
    async with open_engine(database, logs) as engine:
        async def settled() -> bool:
            rows = [(await engine.store.kv.load_row(TENANT, "default", key))[0]
                    for key in [*plain, "m-note"]]
            return len(logs.messages("dead letter")) == 2 and rows == [None] * len(rows)
        await eventually(settled)
        await asyncio.sleep(0.2)
        for key in [*plain, "m-note"]:
            assert len(logs.messages(f"quiet\t{key}\t1")) == 1, key
            assert logs.messages(f"second\t{key}") == [f"second\t{key}"], key
        assert await kv_value(engine, "noted") == "m-note"
        for key in ("b-boom", "fail1"):
            assert len(logs.messages(f"quiet\t{key}\t")) == 7, key
            assert (await engine.store.kv.load_row(TENANT, "default", key))[0] is None
        assert logs.messages("VM discarded after breaking its memory limit")
        (status,) = await engine.status()
        assert status["timers"]["fired"] == len(plain) + 3
        assert status["timers"]["batches"] <= 15


async def test_a_kill_in_the_middle_of_a_backlog_loses_no_expiry(tmp_path: Path) -> None:
    keys = [f"crash{i:02d}" for i in range(40)]
    database = f"sqlite:///{tmp_path / 'backlog-kill.db'}"
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        for key in keys:
            await engine.dispatch(TENANT, Event("ARM", {"key": key, "ttl": 0.3}))
    await asyncio.sleep(0.6)
    logs = Logs()
    async with open_engine(database, logs, topology="process") as engine:
        async def some_fired() -> bool:
            return len(logs.messages("expired\tcrash")) >= 5
        await eventually(some_fired)
        handle = engine.pool.worker_for(TENANT).current
        assert handle is not None
        assert handle.pid is not None
        os.kill(handle.pid, signal.SIGKILL)  # each handler spins 50 ms: mid-batch

        async def all_gone() -> bool:
            for key in keys:
                if (await engine.store.kv.load_row(TENANT, "default", key))[0] is not None:
                    return False
            return True
        await eventually(all_gone, within=30)
        for key in keys:
            firings = logs.messages(f"expired\t{key}\t")
            assert firings, f"{key} never fired"  # none lost
            assert len({line.split("\t")[3] for line in firings}) == 1  # one id, however often
            assert (await kv_value(engine, f"fired:{key}")) >= 1


def test_batches_by_tenant_keeps_each_tenants_order() -> None:
    other = TenantId.guild(8)
    refs = [TimerRef("expiry", float(n), TENANT if n % 3 else other, "default", f"k{n}", 1)
            for n in range(12)]
    batches = batches_by_tenant(refs, 3)
    assert [[ref.key for ref in batch] for batch in batches] == [
        ["k0", "k3", "k6"], ["k1", "k2", "k4"], ["k5", "k7", "k8"], ["k9"], ["k10", "k11"]]
    assert all(len({ref.tenant for ref in batch}) == 1 for batch in batches)


def test_stable_ids_are_the_uuid5_of_the_timer() -> None:
    # Handlers de-duplicate on these ids across restarts: they must never change.
    for kind, scope, key, version in (("expiry", "default", "a", 1),
                                      ("scheduled", "", "42", 42), ("expiry", "s", "é/ü", 7)):
        expected = uuid.uuid5(uuid.NAMESPACE_URL,
                              f"moonshard:{kind}:{TENANT}:{scope}:{key}:{version}").hex
        assert stable_id(kind, TENANT, scope, key, version) == expected


async def test_kill_during_firing_fires_again_afterwards(tmp_path: Path) -> None:
    logs = Logs()
    database = f"sqlite:///{tmp_path / 'kill.db'}"
    async with open_engine(database, logs, topology="process",
                           limits=Limits(cpu_seconds=5)) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        await engine.dispatch(TENANT, Event("ARM", {"key": "slow1", "ttl": 0.1}))

        async def started() -> bool:
            return bool(logs.messages("expired\tslow1"))
        await eventually(started)
        handle = engine.pool.worker_for(TENANT).current
        assert handle is not None
        assert handle.pid is not None
        os.kill(handle.pid, signal.SIGKILL)

        async def fired() -> bool:
            return await kv_value(engine, "fired:slow1") == 1
        await eventually(fired, within=30)
        await asyncio.sleep(0.2)
        firings = logs.messages("expired\tslow1")
        assert len(firings) >= 2  # at least once: delivered again after the crash
        assert len({line.split("\t")[3] for line in firings}) == 1  # with the same id
        row, _ = await engine.store.kv.load_row(TENANT, "default", "slow1")
        assert row is None


RESUME = """
return {
  Startup = function(ctx, event)
    local log = ctx.kv.get("log") or {}
    log[#log + 1] = "startup:" .. event.data.reason
    ctx.kv.set("log", log)
  end,
  KeyResume = function(ctx, event)
    local log = ctx.kv.get("log") or {}
    log[#log + 1] = "resume:" .. event.data.key .. "=" .. event.data.value.step
    ctx.kv.set("log", log)
  end,
  START = function(ctx) ctx.kv.set("job", {step = 1}, {resume = true}) end,
  PING = function(ctx)
    local log = ctx.kv.get("log") or {}
    log[#log + 1] = "ping"
    ctx.kv.set("log", log)
  end,
}
"""


async def test_resume_keys_run_after_a_restart_before_any_other_event(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "jobs", {"init.lua": RESUME})
        await engine.dispatch(TENANT, Event("START"))
        assert await kv_value(engine, "log") == ["startup:worker_start"]
    async with open_engine(database, Logs()) as engine:
        # Started eagerly: no event is sent, yet the work resumes.
        async def resumed() -> bool:
            return await kv_value(engine, "log") == [
                "startup:worker_start", "startup:worker_start", "resume:job=1"]
        await eventually(resumed)
        await engine.dispatch(TENANT, Event("PING"))
        assert (await kv_value(engine, "log"))[-1] == "ping"


EMITS = """
return {
  GO = function(ctx, event)
    for i = 1, event.data.n do ctx.events.emit("STEP", {i = i}) end
  end,
  STEP = function(ctx, event)
    local seen = ctx.kv.get("seen") or {}
    seen[#seen + 1] = event.data.i
    ctx.kv.set("seen", seen)
  end,
  LATER = function(ctx, event)
    ctx.events.schedule("PING", {n = event.data.n}, {delay = event.data.delay}, event.data.key)
  end,
  CANCEL = function(ctx, event) return ctx.events.cancel(event.data.key) end,
  PING = function(ctx, event)
    local pings = ctx.kv.get("pings") or {}
    pings[#pings + 1] = event.data.n
    ctx.kv.set("pings", pings)
  end,
}
"""


async def test_emitted_events_run_in_order_after_the_dispatch(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "emits", {"init.lua": EMITS})
        assert (await engine.dispatch(TENANT, Event("GO", {"n": 3})))[0].ok

        async def all_seen() -> bool:
            return await kv_value(engine, "seen") == [1, 2, 3]
        await eventually(all_seen)
        over = await engine.dispatch(TENANT, Event("GO", {"n": 11}))
        assert not over[0].ok
        assert "at most 10 emits per dispatch" in (over[0].error or "")
        await asyncio.sleep(0.3)
        assert await kv_value(engine, "seen") == [1, 2, 3]  # the failed run emitted nothing


async def test_schedule_with_a_key_replaces_and_cancel_cancels(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "emits", {"init.lua": EMITS})
        await engine.dispatch(TENANT, Event("LATER", {"n": 1, "delay": 0.3, "key": "k"}))
        await engine.dispatch(TENANT, Event("LATER", {"n": 2, "delay": 0.3, "key": "k"}))
        await engine.dispatch(TENANT, Event("LATER", {"n": 3, "delay": 0.3, "key": "x"}))
        cancelled = await engine.dispatch(TENANT, Event("CANCEL", {"key": "x"}))
        assert cancelled[0].value is True
        assert (await engine.dispatch(TENANT, Event("CANCEL", {"key": "x"})))[0].value is False
        await engine.dispatch(TENANT, Event("LATER", {"n": 4, "delay": 0.2}))

        async def pinged() -> bool:
            return sorted(await kv_value(engine, "pings") or []) == [2, 4]
        await eventually(pinged)
        await asyncio.sleep(0.4)
        assert sorted(await kv_value(engine, "pings")) == [2, 4]


async def test_scheduled_events_survive_a_restart(database: str) -> None:
    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "emits", {"init.lua": EMITS})
        await engine.dispatch(TENANT, Event("LATER", {"n": 9, "delay": 0.5}))
    await asyncio.sleep(0.8)
    async with open_engine(database, Logs()) as engine:
        async def pinged() -> bool:
            return await kv_value(engine, "pings") == [9]
        await eventually(pinged)


async def test_pending_scheduled_events_are_limited(database: str) -> None:
    async with open_engine(database, Logs(),
                           limits=Limits(scheduled_per_tenant=2)) as engine:
        await engine.templates.put(TENANT, "emits", {"init.lua": EMITS})
        for n in range(2):
            assert (await engine.dispatch(
                TENANT, Event("LATER", {"n": n, "delay": 60})))[0].ok
        third = await engine.dispatch(TENANT, Event("LATER", {"n": 3, "delay": 60}))
        assert not third[0].ok
        assert "limit is 2" in (third[0].error or "")


async def test_expiries_written_outside_a_worker_fire_once_told(database: str) -> None:
    from moonshard.store.api import KVSet

    async with open_engine(database, Logs()) as engine:
        await engine.templates.put(TENANT, "t", {"init.lua": EXPIRY})
        await engine.dispatch(TENANT, Event("GET", {"key": "warm"}))  # the wheel has read ahead
        now = time.time()
        results = await engine.store.kv.apply(
            TENANT, [KVSet("default", "outside", "v", expires_at=now + 0.2)], now=now)
        await engine.kv_written(TENANT, [r for r in results if not isinstance(r, bool)
                                         and r is not None])

        async def fired() -> bool:
            return await kv_value(engine, "fired:outside") == 1
        await eventually(fired, within=5)
