"""Sandbox benchmarks: VM build, idle memory, handler call overhead, CPU-hook overhead."""

from __future__ import annotations

import asyncio
import gc
from types import MappingProxyType

from lupa import lua54

from moonshard.bench.measure import Figure, mean, percentile, rss_bytes, time_calls
from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.sandbox import TenantVM, drive, run_inline
from moonshard.sandbox.cpualarm import CpuAlarm
from moonshard.sandbox.loading import build_vm
from moonshard.sandbox.vm import HOOK_COUNT
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId

__all__ = ["run_sandbox_bench"]

_TEMPLATE = MappingProxyType({
    "init.lua": """
        local util = require("util")
        return {
          PING = function(ctx, event) return 1 end,
          WORK = function(ctx, event)
            local x = 0
            for i = 1, event.data.n do x = x + i % 7 end
            return x
          end,
          GUILD_MEMBER_ADD = function(ctx, event) return util.greet(event.data.user) end,
        }""",
    "util.lua": """
        local M = {}
        function M.greet(user) return "Welcome, " .. user.username end
        return M""",
})
_SUITE = "sandbox"


def _quiet(level: str, template: str, message: str) -> None:
    """Benchmarks discard template output."""


def _build_vm(tenant: TenantId, limits: Limits, cpu_alarm: CpuAlarm | None = None) -> TenantVM:
    # As a worker builds it (build_vm), on the calling thread.
    template_set = TemplateSet(tenant, 1, (Template("bench", _TEMPLATE, ()),))
    return asyncio.run(build_vm(template_set, limits, _quiet, run_inline, cpu_alarm=cpu_alarm))


def _bare_runtime() -> lua54.LuaRuntime:
    return lua54.LuaRuntime(register_eval=False, unpack_returned_tuples=True)


def run_sandbox_bench(quick: bool = False) -> list[Figure]:
    limits = Limits()
    tenant = TenantId.guild(1)
    builds = 50 if quick else 300
    calls = 2_000 if quick else 20_000
    figures: list[Figure] = []

    build = time_calls(lambda: _build_vm(tenant, limits), builds)
    bare = time_calls(_bare_runtime, builds)
    figures.append(Figure(_SUITE, "VM create + template load, mean", mean(build) * 1e3, "ms",
                          mean(bare) * 1e3, "bare LuaRuntime()"))
    figures.append(Figure(_SUITE, "VM create + template load, p99",
                          percentile(build, 0.99) * 1e3, "ms"))

    # The bare baseline is measured first: freed memory of a larger run would hide its cost.
    idle = 100 if quick else 500
    gc.collect()
    before = rss_bytes()
    bare_vms = [_bare_runtime() for _ in range(idle)]
    bare_rss = (rss_bytes() - before) / idle
    before = rss_bytes()
    vms = [_build_vm(tenant, limits) for _ in range(idle)]
    per_vm_rss = (rss_bytes() - before) / idle
    lua_bytes = mean([float(vm.memory_used) for vm in vms])
    del vms, bare_vms
    gc.collect()
    figures.append(Figure(_SUITE, "idle VM memory (process RSS per VM)", per_vm_rss / 1024,
                          "KiB", bare_rss / 1024, "bare LuaRuntime() with its standard library"))
    figures.append(Figure(_SUITE, "idle VM memory (Lua heap)", lua_bytes / 1024, "KiB"))

    vm = _build_vm(tenant, limits)
    event = Event("PING", {})

    async def one_handler() -> None:
        run = vm.start_handler("bench", 1, event)
        assert run is not None
        await drive(run, {}, run_inline)

    loop = asyncio.new_event_loop()
    try:
        handler = time_calls(lambda: loop.run_until_complete(one_handler()), calls)
        baseline_fn = _bare_runtime().eval("function(ctx, event) return 1 end")
        bare_call = time_calls(lambda: baseline_fn(None, None), calls)
        figures.append(Figure(_SUITE, "handler call (trivial handler), mean",
                              mean(handler) * 1e6, "µs", mean(bare_call) * 1e6,
                              "bare lupa function call"))
        figures.append(Figure(_SUITE, "handler call (trivial handler), p99",
                              percentile(handler, 0.99) * 1e6, "µs",
                              percentile(bare_call, 0.99) * 1e6, "bare lupa function call"))

        work = Event("WORK", {"n": 2_000_000})

        async def heavy() -> None:
            run = vm.start_handler("bench", 1, work)
            assert run is not None
            await drive(run, {}, run_inline)

        hooked = time_calls(lambda: loop.run_until_complete(heavy()), 3 if quick else 10)
        bare_loop = _bare_runtime().eval(
            "function(n) local x = 0 for i = 1, n do x = x + i % 7 end return x end")
        unhooked = time_calls(lambda: bare_loop(2_000_000), 3 if quick else 10)
        figures.append(Figure(_SUITE, "2M-iteration Lua loop (CPU limit hook on)",
                              mean(hooked) * 1e3, "ms", mean(unhooked) * 1e3,
                              "same loop, bare lupa, no hook"))
        alarm = CpuAlarm.open(HOOK_COUNT)
        if alarm is not None:
            # As in a worker: the hook is set only when a run's budget is close to spent.
            with alarm, alarm.attached():
                vm = _build_vm(tenant, limits, alarm)
                watched = time_calls(lambda: loop.run_until_complete(heavy()),
                                     3 if quick else 10)
            figures.append(Figure(_SUITE, "2M-iteration Lua loop (CPU limit by the alarm, as "
                                  "in a worker)", mean(watched) * 1e3, "ms",
                                  mean(unhooked) * 1e3, "same loop, bare lupa, no hook"))
    finally:
        loop.close()
    return figures
