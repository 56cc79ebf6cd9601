"""Dispatch throughput and p50/p99 latency over the ray topology against the process topology.

    .venv/bin/python bench/ray_vs_process.py [--seconds 5] [--concurrency 64]

Both on PostgreSQL (a fresh schema, dropped afterwards), two workers, the same trivial handler,
a closed loop of ``concurrency`` callers over 32 tenants; the ray topology on a local Ray
started here, with and without a 1 ms batch window. A benchmark, not a test: nothing asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg
import ray

from moonshard import Engine, Event, TenantId
from moonshard.topology.ray import RayOptions

__all__ = ["main"]

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
HANDLER = "return {PING = function(ctx, event) return event.data.i end}"


async def _one(label: str, url: str, seconds: float, concurrency: int,
               **options: object) -> None:
    tenants = [TenantId.guild(index << 22 | index) for index in range(32)]
    async with Engine.open(url, workers=2, **options) as engine:  # type: ignore[arg-type]
        for tenant in tenants:
            await engine.templates.put(tenant, "ping", {"init.lua": HANDLER})
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def caller(number: int) -> None:
            i = 0
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                await engine.dispatch(tenants[(number + i) % len(tenants)],
                                      Event("PING", {"i": i}))
                latencies.append(time.perf_counter() - began)
                i += 1

        await asyncio.gather(*(caller(number) for number in range(concurrency)))
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        print(f"{label:<28} {len(latencies) / seconds:>9.0f} dispatches/s   "
              f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


async def _run(seconds: float, concurrency: int) -> None:
    for label, options in (
        ("process x2", {"topology": "process"}),
        ("ray x2 (no window)", {"topology": "ray", "ray": RayOptions()}),
        ("ray x2 (1 ms window)", {"topology": "ray",
                                  "ray": RayOptions(batch_window_seconds=0.001)}),
    ):
        schema = "bench_" + uuid.uuid4().hex[:12]
        try:
            await _one(label, f"{POSTGRES_URL}?schema={schema}", seconds, concurrency, **options)
        finally:
            conn = await asyncpg.connect(POSTGRES_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024)
    try:
        asyncio.run(_run(args.seconds, args.concurrency))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
