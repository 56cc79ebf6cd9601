"""The ``workers`` suite: dispatch throughput and latency per topology, and crash recovery.

Many tenants (guild ids spread so that every worker owns some), each with one small
template: a counter in a Lua global. A closed loop keeps a fixed number of dispatches in
flight through ``Engine.dispatch``. In the same run, the same handler on the same tenants is
driven through the two baselines of ``moonshard.bench.baselines``: bare lupa runtimes called
on one thread (the limit), and the old thread-per-tenant strategy fed by the same closed loop.

Recovery: a process worker is killed with SIGKILL and the time until a dispatch to one of
its tenants succeeds again is measured, beside the cost of starting a Python interpreter that
imports the worker (the floor of any process restart).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Sequence

from moonshard.bench.baselines import RawLupaTenants, ThreadPerTenant
from moonshard.bench.load import LoadResult, closed_loop
from moonshard.bench.measure import Figure, mean
from moonshard.bench.partial import PartialRun
from moonshard.bench.scratch import scratch_sqlite
from moonshard.engine import Engine
from moonshard.errors import MoonshardError, WorkerCrashed, WorkerUnavailable
from moonshard.events import Event
from moonshard.store import open_store
from moonshard.templates import Template
from moonshard.tenants import TenantId
from moonshard.topology.pool import Topology
from moonshard.topology.supervisor import RestartPolicy

__all__ = ["COUNTER_TEMPLATE", "EVENT_NAME", "FULL", "QUICK", "WorkersScale", "bench_tenants",
           "run_workers_bench"]

_SUITE = "workers"
COUNTER_TEMPLATE = """
local n = 0
return { TICK = function(ctx, event) n = n + 1 return n end }
"""
EVENT_NAME = "TICK"
# A killed worker not serving again after this long is a failure of the suite.
_RECOVERY_TIMEOUT = 30.0
# Tenant snowflakes start here; consecutive tenants land on consecutive workers.
_FIRST_SHARD_ID = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class WorkersScale:
    """How big a run is: tenants, dispatches in flight, seconds per measurement..."""

    tenants: int
    in_flight: int
    seconds: float
    raw_calls: int
    recoveries: int
    # The old strategy is measured again at this many tenants (threads), with its memory.
    old_tenants_large: int = 0


FULL = WorkersScale(tenants=1000, in_flight=64, seconds=6.0, raw_calls=300_000, recoveries=6,
                    old_tenants_large=10_000)
QUICK = WorkersScale(tenants=200, in_flight=64, seconds=1.0, raw_calls=30_000, recoveries=2,
                     old_tenants_large=2_000)
_TOPOLOGIES: tuple[tuple[Topology, int], ...] = (
    ("thread", 1), ("thread", 2), ("process", 1), ("process", 2))


def bench_tenants(count: int) -> list[TenantId]:
    """Guild tenants whose ids spread over workers by Discord's shard formula."""
    return [TenantId.guild((_FIRST_SHARD_ID + index) << 22) for index in range(count)]


def run_workers_bench(quick: bool = False, *, scale: WorkersScale | None = None) -> list[Figure]:
    """Runs the suite at ``scale`` (default: ``QUICK`` or ``FULL``)."""
    return asyncio.run(_run(scale or (QUICK if quick else FULL)))


async def _run(scale: WorkersScale) -> list[Figure]:
    tenants = bench_tenants(scale.tenants)
    figures: list[Figure] = []
    with scratch_sqlite() as url:
        await _store_templates(url, tenants)
        raw = RawLupaTenants([COUNTER_TEMPLATE] * len(tenants), EVENT_NAME)
        raw_seconds = raw.time_calls(scale.raw_calls)
        raw_rate = scale.raw_calls / raw_seconds
        sample = Event(EVENT_NAME)
        raw_converted_rate = scale.raw_calls / raw.time_converted_calls(
            scale.raw_calls, sample.name, sample.id, sample.at, {})
        raw_build_rate = len(raw) / raw.build_seconds
        del raw
        old, old_idle, old_memory = await _thread_per_tenant(len(tenants), scale)
        shape = f"{scale.tenants:,} tenants, {scale.in_flight} in flight"
        old_name = f"old strategy: {scale.tenants:,} threads, one runtime and queue each"
        large: tuple[int, LoadResult, float] | None = None
        if scale.old_tenants_large:
            large_old, _, large_memory = await _thread_per_tenant(scale.old_tenants_large, scale)
            large = (scale.old_tenants_large, large_old, large_memory)
        rates: dict[tuple[Topology, int], float] = {}
        for topology, workers in _TOPOLOGIES:
            label = f"{topology} ×{workers}"
            cold, warm, extra = await _engine_load(url, topology, workers, tenants, scale)
            rates[topology, workers] = warm.per_second
            if extra is not None:
                figures += [
                    Figure(_SUITE, f"dispatches/s vs raw lupa converting the event, {label}, "
                           f"{shape}", warm.per_second, "dispatches/s", raw_converted_rate,
                           "raw lupa: the event converted to a Lua table, then the handler "
                           "called, pre-built runtimes, one thread"),
                    Figure(_SUITE, f"awaited dispatch latency p99 on an idle engine, {label}, "
                           "1 in flight", extra.idle.latency(0.99) * 1e3, "ms",
                           old_idle.latency(0.99) * 1e3, "old strategy, 1 in flight"),
                    Figure(_SUITE, f"cold start: first dispatch to a tenant whose template is "
                           f"stored, mean, {label}, 1 in flight", mean(list(
                               extra.cold.latencies)) * 1e3, "ms", 1e3 / raw_build_rate,
                           "raw lupa: create runtime + load template, one thread"),
                    Figure(_SUITE, f"memory per resident tenant VM, {label} (process RSS "
                           "growth / tenants)", extra.memory_per_vm / 1024, "KiB",
                           old_memory / 1024, old_name),
                ]
                if large is not None:
                    large_name = (f"old strategy: {large[0]:,} threads, one runtime and queue "
                                  "each")
                    figures += [
                        Figure(_SUITE, f"dispatches/s vs thread per tenant at {large[0]:,} "
                               f"tenants, {label}, {shape}", warm.per_second, "dispatches/s",
                               large[1].per_second, large_name),
                        Figure(_SUITE, f"memory per resident tenant VM, {label}, vs the old "
                               f"strategy at {large[0]:,} tenants", extra.memory_per_vm / 1024,
                               "KiB", large[2] / 1024, large_name),
                    ]
            figures += [
                Figure(_SUITE, f"dispatches/s vs raw lupa, {label}, {shape}", warm.per_second,
                       "dispatches/s", raw_rate,
                       "raw lupa: same handler on pre-built runtimes, one thread"),
                Figure(_SUITE, f"dispatches/s vs thread per tenant, {label}, {shape}",
                       warm.per_second, "dispatches/s", old.per_second, old_name),
                Figure(_SUITE, f"dispatch latency p50, {label}, {shape}",
                       warm.latency(0.5) * 1e3, "ms", old.latency(0.5) * 1e3,
                       "old strategy: thread per tenant, same driver"),
                Figure(_SUITE, f"dispatch latency p99, {label}, {shape}",
                       warm.latency(0.99) * 1e3, "ms", old.latency(0.99) * 1e3,
                       "old strategy: thread per tenant, same driver"),
                Figure(_SUITE, f"first dispatch to each tenant (VM build), {label}, {shape}",
                       cold.per_second, "dispatches/s", raw_build_rate,
                       "raw lupa: create runtime + load template, one thread"),
            ]
        figures.append(Figure(
            _SUITE, f"process ×2 scaling: dispatches/s of 2 workers ÷ 1 worker, {shape}",
            rates["process", 2], "dispatches/s", rates["process", 1], "process ×1, same run"))
        if large is not None:
            figures += await _large_engine_figures(url, large, scale)
        try:
            figures += await _recovery_figures(url, tenants, scale.recoveries)
        except (MoonshardError, OSError, RuntimeError, TimeoutError) as error:
            raise PartialRun(figures, "recovery after SIGKILL", error) from error
    return figures


async def _store_templates(url: str, tenants: Sequence[TenantId]) -> None:
    """Every tenant gets the counter template, written straight to the store."""
    template = Template("counter", {"init.lua": COUNTER_TEMPLATE}, (EVENT_NAME,))
    async with await open_store(url) as store:
        for tenant in tenants:
            await store.templates.put(tenant, template)


async def _memory_probe(*args: str) -> float:
    """Bytes per tenant, measured in a fresh process (``moonshard.bench.memory_probe``)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moonshard.bench.memory_probe", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the memory probe {args[0]} failed (exit {process.returncode})")
    return float(json.loads(output)["bytes_per_tenant"])


async def _thread_per_tenant(tenants: int, scale: WorkersScale,
                             ) -> tuple[LoadResult, LoadResult, float]:
    """The old strategy's closed loop, one call at a time, and its process RSS growth per
    tenant (bytes, in a fresh process)."""
    memory = await _memory_probe("old", str(tenants))
    old = ThreadPerTenant([COUNTER_TEMPLATE] * tenants, EVENT_NAME)
    await asyncio.to_thread(old.start)
    try:
        async def call(lane: int, number: int) -> None:
            await old.call(number % tenants)
        loaded = await closed_loop(call, in_flight=scale.in_flight, seconds=scale.seconds)
        idle = await closed_loop(call, in_flight=1, seconds=scale.seconds / 2)
        return loaded, idle, memory
    finally:
        await asyncio.to_thread(old.stop)


def _quiet(tenant: TenantId, level: str, template: str, message: str) -> None:
    """Benchmarks discard template output."""


async def _dispatch_ok(engine: Engine, tenant: TenantId) -> None:
    results = await engine.dispatch(tenant, Event(EVENT_NAME))
    if len(results) != 1 or not results[0].ok:
        raise RuntimeError(f"a benchmark dispatch to {tenant} failed: {results}")


@dataclasses.dataclass(frozen=True, slots=True)
class _OneWorkerFigures:
    """Measured on the thread topology with one worker only (its VMs live in this process)."""

    cold: LoadResult      # the first dispatch to each tenant, one at a time
    idle: LoadResult      # one dispatch at a time to a warm engine
    memory_per_vm: float  # process RSS growth per resident VM, bytes


async def _engine_load(url: str, topology: Topology, workers: int, tenants: Sequence[TenantId],
                       scale: WorkersScale,
                       ) -> tuple[LoadResult, LoadResult, _OneWorkerFigures | None]:
    """(the first dispatch to each tenant, the steady closed loop, and for thread ×1 the
    one-at-a-time figures) on one engine."""
    single = topology == "thread" and workers == 1
    async with Engine.open(url, topology=topology, workers=workers, log=_quiet,
                           max_resident_vms=max(2000, len(tenants))) as engine:
        async def call(lane: int, number: int) -> None:
            await _dispatch_ok(engine, tenants[number % len(tenants)])

        cold = await closed_loop(call, in_flight=1 if single else scale.in_flight,
                                 count=len(tenants))
        warm = await closed_loop(call, in_flight=scale.in_flight, seconds=scale.seconds)
        extra = None
        if single:
            idle = await closed_loop(call, in_flight=1, seconds=scale.seconds / 2)
            extra = _OneWorkerFigures(cold, idle, await _memory_probe(
                "moonshard", url, str(len(tenants))))
    return cold, warm, extra


async def _large_engine_figures(url: str, large: tuple[int, LoadResult, float],
                               scale: WorkersScale) -> list[Figure]:
    """Thread ×1 at the old strategy's large tenant count, beside it."""
    count, old, old_memory = large
    tenants = bench_tenants(count)
    await _store_templates(url, tenants)
    _, warm, extra = await _engine_load(url, "thread", 1, tenants, scale)
    assert extra is not None
    shape = f"{count:,} tenants, {scale.in_flight} in flight"
    old_name = f"old strategy: {count:,} threads, one runtime and queue each"
    return [
        Figure(_SUITE, f"dispatches/s vs thread per tenant, thread ×1, {shape}",
               warm.per_second, "dispatches/s", old.per_second, old_name),
        Figure(_SUITE, f"memory per resident tenant VM, thread ×1, {count:,} tenants (process "
               "RSS growth / tenants)", extra.memory_per_vm / 1024, "KiB", old_memory / 1024,
               old_name),
    ]


async def _recovery_figures(url: str, tenants: Sequence[TenantId], samples: int) -> list[Figure]:
    # Back-off off, so that every sample measures a first crash (the one restarted at once).
    policy = RestartPolicy(first_backoff=0.0)
    recoveries: list[float] = []
    async with Engine.open(url, topology="process", workers=2, log=_quiet,
                           restart_policy=policy) as engine:
        for sample in range(samples):
            recoveries.append(await _kill_and_recover(engine, tenants[sample % 2]))
    starts = [await _interpreter_start() for _ in range(samples)]
    floor = f"start python + import the worker module (mean of {samples})"
    return [
        Figure(_SUITE, f"recovery after SIGKILL of a process worker, mean of {samples}",
               mean(recoveries) * 1e3, "ms", mean(starts) * 1e3, floor),
        Figure(_SUITE, f"recovery after SIGKILL of a process worker, worst of {samples}",
               max(recoveries) * 1e3, "ms", mean(starts) * 1e3, floor),
    ]


async def _kill_and_recover(engine: Engine, tenant: TenantId) -> float:
    """Seconds from SIGKILL of ``tenant``'s worker to its next successful dispatch."""
    await _dispatch_ok(engine, tenant)  # its VM is resident, as in a worker under load
    handle = engine.pool.worker_for(tenant).current
    if handle is None or handle.pid is None:
        raise RuntimeError("the worker to kill is not running")
    started = time.perf_counter()
    os.kill(handle.pid, signal.SIGKILL)
    while True:
        try:
            await asyncio.wait_for(_dispatch_ok(engine, tenant), _RECOVERY_TIMEOUT)
        except (WorkerCrashed, WorkerUnavailable, ConnectionError):
            # Not back yet. (A ConnectionError is the dead worker's socket leaking through.)
            if time.perf_counter() - started > _RECOVERY_TIMEOUT:
                raise
            await asyncio.sleep(0.001)
            continue
        return time.perf_counter() - started


async def _interpreter_start() -> float:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import moonshard.topology.child",
        stdin=asyncio.subprocess.DEVNULL)
    if await process.wait() != 0:
        raise RuntimeError("the worker module failed to import")
    return time.perf_counter() - started
