"""One handler run, one transaction: kv writes, schedules and emitted events commit together or
not at all, on both stores; emitted events survive a crash between their commit and delivery."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest

from moonshard import Engine, Event, TenantId
from moonshard.errors import LimitExceeded, WorkerCrashed
from moonshard.limits import Limits
from moonshard.store.api import (
    KVIncr,
    KVRecord,
    RunCancel,
    RunEffects,
    RunEmit,
    RunLimits,
    RunSchedule,
    Store,
)

A = TenantId.guild(1)
SHARD = (0, 1)


async def value(store: Store, key: str, scope: str = "default") -> object:
    record = await store.kv.get(A, scope, key, now=time.time())
    return None if record is None else record.value


async def test_commit_run_is_all_or_nothing(store: Store) -> None:
    now = time.time()
    limits = RunLimits(max_keys=100, max_pending=1, max_emits=2)
    committed = await store.runs.commit_run(A, RunEffects(
        writes=(KVIncr("default", "n", 1),),
        events=(RunSchedule("later", "LATER", {"x": 1}, now + 3600),),
        emits=(RunEmit("FOLLOW", {"y": 2}, "7", "id-1"),)), now=now, limits=limits)
    assert isinstance(committed.kv_results[0], KVRecord)
    assert committed.kv_results[0].value == 1
    assert [event.name for event in committed.scheduled] == ["LATER"]
    assert [(row.name, row.data, row.author, row.event_id) for row in committed.outbox] == [
        ("FOLLOW", {"y": 2}, "7", "id-1")]
    # Over the pending limit at commit: the incr and the emit go too.
    with pytest.raises(LimitExceeded) as refused:
        await store.runs.commit_run(A, RunEffects(
            writes=(KVIncr("default", "n", 1),),
            events=(RunSchedule(None, "MORE", {}, now + 60),),
            emits=(RunEmit("FOLLOW", {}, None, "id-2"),)), now=now, limits=limits)
    assert refused.value.limit == "events.scheduled"
    assert await value(store, "n") == 1
    assert [row.event_id for row in await store.runs.outbox(SHARD, limit=10)] == ["id-1"]
    # Replacing the keyed event, or cancelling it first, stays within the limit.
    await store.runs.commit_run(A, RunEffects(
        events=(RunCancel("later"), RunSchedule("later", "LATER", {"x": 2}, now + 60))),
        now=now, limits=limits)
    assert await store.timers.pending_count(A) == 1
    with pytest.raises(LimitExceeded, match="emits"):
        await store.runs.commit_run(A, RunEffects(
            writes=(KVIncr("default", "n", 1),),
            emits=tuple(RunEmit("E", {}, None, f"e{i}") for i in range(3))),
            now=now, limits=limits)
    assert await value(store, "n") == 1
    (row,) = await store.runs.outbox(SHARD, limit=10)
    assert await store.runs.outbox(SHARD, limit=10, after=row.id) == []
    assert await store.runs.delivered(row.id) is True
    assert await store.runs.delivered(row.id) is False
    assert await store.runs.outbox(SHARD, limit=10) == []


class LogWatch:
    """The tenant log of an engine, with a way to wait for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def __call__(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        # Thread workers log from their own thread.
        self._loop.call_soon_threadsafe(self._add, message)

    def _add(self, message: str) -> None:
        self.lines.append(message)
        self._changed.set()

    async def wait_for(self, text: str, count: int = 1) -> None:
        async def seen() -> None:
            while sum(text in line for line in self.lines) < count:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(seen(), 60)


async def eventually(check: Callable[[], object], what: str) -> None:
    """Polls an async condition (no timing is asserted: 60 s is only a hang guard)."""
    async def poll() -> None:
        while True:
            if await check():  # type: ignore[misc]
                return
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(poll(), 60)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


# Waits, inside a handler, until a key of scope "gate" is set from outside.
GATE = """
local function wait_for(ctx, key)
  while true do
    local ok, seen = pcall(ctx.kv.get, key, {scope = "gate"})
    if ok and seen then return end
  end
end
"""


async def test_a_run_refused_at_commit_leaves_no_write_and_is_retried_once(
        store_url: str) -> None:
    log = LogWatch()
    async with Engine.open(store_url, topology="thread", workers=1, log=log,
                           limits=Limits(scheduled_per_tenant=1)) as engine:
        store = engine.store
        await engine.templates.put(A, "expiring", {"init.lua": GATE + """
            return {
              SETUP = function(ctx) ctx.kv.set("k", 1, {ttl = 0.2}) end,
              KeyExpiry = function(ctx, event)
                ctx.kv.incr("n")
                ctx.events.schedule("LATER", {}, {delay = 3600})
                print("scheduled, attempt " .. event.data.attempt)
                wait_for(ctx, "go")
              end,
              LATER = function() end,
            }"""})
        assert (await engine.dispatch(A, Event("SETUP")))[0].ok
        await log.wait_for("scheduled, attempt 1")
        # Another writer takes the last pending slot between the run's check and its commit.
        await store.timers.schedule(A, "blocker", "LATER", {}, time.time() + 3600)
        await store.kv.apply(A, [KVIncr("gate", "go", 1)], now=time.time())
        await log.wait_for("commit refused")
        assert await value(store, "n") is None  # the incr of the refused run is not stored
        assert await store.timers.pending_count(A) == 1
        await store.timers.cancel(A, "blocker")

        async def retried() -> bool:
            return await value(store, "n") is not None and \
                await store.kv.get(A, "default", "k", now=0.0) is None
        await eventually(retried, "the retry committed")
        assert await value(store, "n") == 1
        assert await store.timers.pending_count(A) == 1  # its LATER, once


async def test_an_emitted_event_survives_a_kill_between_commit_and_delivery(
        store_url: str) -> None:
    log = LogWatch()
    async with Engine.open(store_url, topology="process", workers=1, log=log,
                           limits=Limits(cpu_seconds=120)) as engine:
        store = engine.store
        await engine.templates.put(A, "emitter", {"init.lua": GATE + """
            return {
              EMIT = function(ctx)
                ctx.kv.incr("emitted")
                ctx.events.emit("FOLLOW", {n = 1})
                print("emitting")
                wait_for(ctx, "go")
              end,
              SPIN = function()
                print("spinning")
                local until_ = os.clock() + 100
                while os.clock() < until_ do end
              end,
              FOLLOW = function(ctx, event)
                ctx.kv.incr("followed")
                ctx.kv.set("follow_id", event.id)
              end,
            }"""})
        emitting = asyncio.create_task(engine.dispatch(A, Event("EMIT")))
        await log.wait_for("emitting")
        # SPIN queues behind EMIT, so EMIT's emitted event queues behind SPIN.
        spinning = asyncio.create_task(engine.dispatch(A, Event("SPIN")))

        async def queued() -> bool:
            return bool((await engine.tenant_status(A))["queued"])
        await eventually(queued, "SPIN is queued")
        await store.kv.apply(A, [KVIncr("gate", "go", 1)], now=time.time())
        assert (await emitting)[0].ok
        await log.wait_for("spinning")
        (pending,) = await store.runs.outbox(SHARD, limit=10)  # committed, not delivered
        assert await value(store, "followed") is None
        pid = engine.pool.workers[0].health()["pid"]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            await spinning

        async def delivered() -> bool:
            return await value(store, "followed") is not None and \
                not await store.runs.outbox(SHARD, limit=10)
        await eventually(delivered, "the successor delivered the emitted event")
        assert await value(store, "followed") == 1
        assert await value(store, "follow_id") == pending.event_id
        assert await value(store, "emitted") == 1
