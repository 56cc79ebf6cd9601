"""The CPU alarm: a run's coroutine runs without its hook until its budget is close to spent;
the limit holds as before (pcall, nested coroutines, after host calls), and without a running
alarm the hook is set from the start."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import threading
from collections.abc import Iterator

import pytest
from lupa import lua54

from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.sandbox import _cpualarm
from moonshard.sandbox.cpualarm import CpuAlarm
from moonshard.sandbox.driver import drive
from moonshard.sandbox.vm import HOOK_COUNT, TenantVM
from moonshard.tenants import TenantId
from moonshard.worker.steps import LuaSteps
from tests.conftest import RecordingCapability

LUA_MASKCOUNT = 1 << 3

SPINNERS = {
    "a bare loop": "while true do end",
    "pcall swallowing the limit": "while true do pcall(function() while true do end end) end",
    "a coroutine of the template": "coroutine.wrap(function() while true do end end)()",
    "after a host call": "ctx.kv.get('x') while true do end",
    "error handlers": "while true do xpcall(function() while true do end end, print) end",
}


@pytest.fixture
def alarm() -> Iterator[CpuAlarm]:
    opened = CpuAlarm.open(HOOK_COUNT)
    assert opened is not None, "the CPU alarm must be built and installable here"
    with opened:
        yield opened


def lua_library() -> ctypes.CDLL:
    library = ctypes.CDLL(lua54.__file__, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    library.lua_gethookmask.argtypes = [ctypes.c_void_p]
    return library


def unhooked_coroutine() -> tuple[lua54.LuaRuntime, object, int]:
    """A coroutine whose hook is registered but not set, as a worker's run starts: its
    runtime (kept alive by the caller), the coroutine and its lua_State address."""
    runtime = lua54.LuaRuntime(register_eval=False)
    co, address = runtime.execute(
        "local co = coroutine.create(function() end) "
        "debug.sethook(co, function() end, '', 0) "
        "return co, string.format('%p', co)")
    return runtime, co, int(address, 16)


async def run_on_a_thread(vm: TenantVM, event: str, alarm: CpuAlarm | None = None) -> object:
    """Steps the run on a thread of its own (attached to ``alarm``), as a worker's Lua thread
    does."""
    run = vm.start_handler("t", 1, Event(event))
    assert run is not None

    def attached(step):  # type: ignore[no-untyped-def]
        if alarm is None:
            return step()
        with alarm.attached():
            return step()

    async def on_thread(step):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(attached, step)

    return await drive(run, {"kv": RecordingCapability()}, on_thread)


@pytest.mark.parametrize("body", SPINNERS.values(), ids=SPINNERS.keys())
async def test_the_cpu_limit_holds_with_the_alarm(alarm: CpuAlarm, body: str) -> None:
    vm = TenantVM(TenantId.guild(5), Limits(cpu_seconds=0.2), lambda *line: None,
                  cpu_alarm=alarm)
    run = vm.start_load("t", {"init.lua": f"return {{SPIN = function(ctx, event) {body} end}}"})
    vm.finish_load("t", run.step())
    result = await run_on_a_thread(vm, "SPIN", alarm)
    assert not result.ok  # type: ignore[attr-defined]
    assert result.limit == "cpu"  # type: ignore[attr-defined]
    assert "cpu time limit exceeded" in result.error  # type: ignore[attr-defined]


async def test_a_vm_whose_alarm_is_stopped_sets_the_hook_itself() -> None:
    opened = CpuAlarm.open(HOOK_COUNT)
    assert opened is not None
    opened.close()  # never started: nothing would ever arm a lazy hook
    vm = TenantVM(TenantId.guild(5), Limits(cpu_seconds=0.2), lambda *line: None,
                  cpu_alarm=opened)
    run = vm.start_load("t", {"init.lua": "return {SPIN = function() while true do end end}"})
    vm.finish_load("t", run.step())
    result = await run_on_a_thread(vm, "SPIN", opened)
    assert result.limit == "cpu"  # type: ignore[attr-defined]


def test_the_signal_arms_the_entered_coroutine_only(alarm: CpuAlarm) -> None:
    # The C part alone: a coroutine with its hook registered but not set gets the count hook
    # when the signal reaches the thread that entered it, and nothing after it left.
    runtime, co, state = unhooked_coroutine()
    library = lua_library()
    assert library.lua_gethookmask(state) == 0
    signum = signal.SIGRTMIN + 5
    seen: list[int] = []

    def on_its_thread() -> None:
        _cpualarm.enter(state)
        _cpualarm.leave()
        signal.pthread_kill(threading.get_ident(), signum)  # after leave: ignored
        seen.append(library.lua_gethookmask(state))
        _cpualarm.enter(state)
        signal.pthread_kill(threading.get_ident(), signum)
        seen.append(library.lua_gethookmask(state))
        _cpualarm.leave()

    thread = threading.Thread(target=on_its_thread)
    thread.start()
    thread.join()
    assert seen == [0, LUA_MASKCOUNT]
    del co, runtime


def test_the_alarm_signals_a_step_past_its_budget(alarm: CpuAlarm) -> None:
    runtime, co, state = unhooked_coroutine()
    library = lua_library()
    armed = threading.Event()

    def step() -> None:
        with alarm.attached():
            watched_step()

    def watched_step() -> None:
        alarm.enter(state, 0.01)
        try:
            # Waits as a step would run; the alarm's signal sets the hook meanwhile.
            for _ in range(500):
                if library.lua_gethookmask(state) == LUA_MASKCOUNT:
                    armed.set()
                    return
                threading.Event().wait(0.01)
        finally:
            alarm.leave()

    thread = threading.Thread(target=step)
    thread.start()
    thread.join()
    assert armed.is_set()
    del co, runtime


def test_closing_an_alarm_never_waits_on_its_idle_thread() -> None:
    # close() races the alarm's thread going idle; it must end it whatever the interleaving.
    for _ in range(300):
        opened = CpuAlarm.open(HOOK_COUNT, tick=0.0001)
        assert opened is not None
        with opened:
            pass


async def test_a_lua_thread_started_with_signals_blocked_still_gets_the_alarm() -> None:
    # An embedding host may block signals in the thread that starts the worker; the Lua
    # threads inherit that mask, and the alarm must still reach them.
    signum = signal.SIGRTMIN + 5
    outcome: list[object] = []

    def host_thread() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signum})

        async def main() -> None:
            steps = LuaSteps(0, 1, 30.0, lambda *stuck: None)
            with steps:
                vm = TenantVM(TenantId.guild(5), Limits(cpu_seconds=0.2),
                              lambda *line: None, cpu_alarm=steps.cpu_alarm)
                run = vm.start_load("t", {"init.lua": "return {SPIN = function() "
                                                      "while true do end end}"})
                vm.finish_load("t", run.step())
                spin = vm.start_handler("t", 1, Event("SPIN"))
                assert spin is not None
                outcome.append(await drive(spin, {}, steps.runner(TenantId.guild(5), "SPIN")))
                steps.shutdown(wait=True)

        asyncio.run(main())

    thread = threading.Thread(target=host_thread, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the spinning run was never stopped"
    [result] = outcome
    assert result.limit == "cpu"  # type: ignore[attr-defined]


async def test_a_worker_stopping_while_a_run_spins_still_stops_it() -> None:
    # The alarm outlives the Lua threads' last steps: a stop that waits for a spinning run
    # ends when the run's CPU limit does.
    steps = LuaSteps(0, 1, 30.0, lambda *stuck: None)
    with steps:
        vm = TenantVM(TenantId.guild(5), Limits(cpu_seconds=0.3), lambda *line: None,
                      cpu_alarm=steps.cpu_alarm)
        run = vm.start_load("t", {"init.lua": "return {SPIN = function() while true do end end}"})
        vm.finish_load("t", run.step())
        spin = vm.start_handler("t", 1, Event("SPIN"))
        assert spin is not None
        running = asyncio.ensure_future(drive(spin, {}, steps.runner(TenantId.guild(5), "SPIN")))
        await asyncio.sleep(0.05)  # the step is on the Lua thread now
        stopped = threading.Event()
        stopper = threading.Thread(target=lambda: (steps.shutdown(wait=True), stopped.set()),
                                   daemon=True)
        stopper.start()
        assert await asyncio.to_thread(stopped.wait, 20), "the stop waited on a spinning run"
        result = await running
        assert result.limit == "cpu"


# Bounded spinners: in a runtime with no limit each runs to its end, far past the budget
# below; ours must stop every one with the CPU limit.
BOUNDED_SPINNERS = {
    "a bare loop": "for i = 1, 5e7 do end return 'finished'",
    "pcall around the loop": "pcall(function() for i = 1, 5e7 do end end) return 'finished'",
    "a coroutine of the template":
        "coroutine.wrap(function() for i = 1, 5e7 do end end)() return 'finished'",
    "xpcall around the loop":
        "xpcall(function() for i = 1, 5e7 do end end, print) return 'finished'",
}


@pytest.mark.parametrize("body", BOUNDED_SPINNERS.values(), ids=BOUNDED_SPINNERS.keys())
async def test_a_spinner_that_an_unrestricted_runtime_lets_finish_is_stopped(
    alarm: CpuAlarm, body: str,
) -> None:
    unrestricted = lua54.LuaRuntime()
    assert unrestricted.execute(body) == "finished"  # escapes any CPU budget there
    vm = TenantVM(TenantId.guild(5), Limits(cpu_seconds=0.02), lambda *line: None,
                  cpu_alarm=alarm)
    run = vm.start_load("t", {"init.lua": f"return {{SPIN = function(ctx, event) {body} end}}"})
    vm.finish_load("t", run.step())
    result = await run_on_a_thread(vm, "SPIN", alarm)
    assert result.limit == "cpu"  # type: ignore[attr-defined]
