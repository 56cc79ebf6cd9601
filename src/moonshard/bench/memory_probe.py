"""Memory per tenant, measured in a fresh Python process.

Measured inside a process that has already run other figures, RSS growth undercounts: freed
memory (of baselines, of earlier engines) is reused, and only new pages show. So each memory
figure of the workers suite runs here, in a process of its own:

    python -m moonshard.bench.memory_probe moonshard <database url> <tenants>
    python -m moonshard.bench.memory_probe old <tenants>

``moonshard``: a thread ×1 engine on the stored tenants (the bench's counter template), the
RSS growth over the first dispatch to each, one at a time, divided by the tenants (each
dispatch builds the tenant's VM, which stays resident). ``old``: the old thread-per-tenant
strategy's RSS growth while its threads start, each with its runtime and queue, divided by
the tenants. Prints one JSON object: ``{"bytes_per_tenant": ...}``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Sequence

from moonshard.bench.baselines import ThreadPerTenant
from moonshard.bench.measure import rss_bytes
from moonshard.bench.workers_bench import COUNTER_TEMPLATE, EVENT_NAME, bench_tenants
from moonshard.engine import Engine
from moonshard.events import Event

__all__ = ["main"]


async def _moonshard(url: str, count: int) -> float:
    tenants = bench_tenants(count)
    async with Engine.open(url, topology="thread", workers=1, log=lambda *line: None,
                           max_resident_vms=count) as engine:
        await engine.dispatch(tenants[0], Event(EVENT_NAME))  # imports and first-use caches
        gc.collect()
        before = rss_bytes()
        for tenant in tenants[1:]:
            results = await engine.dispatch(tenant, Event(EVENT_NAME))
            if len(results) != 1 or not results[0].ok:
                raise RuntimeError(f"a dispatch to {tenant} failed: {results}")
        return (rss_bytes() - before) / max(1, count - 1)


def _old(count: int) -> float:
    gc.collect()
    before = rss_bytes()
    old = ThreadPerTenant([COUNTER_TEMPLATE] * count, EVENT_NAME)
    old.start()
    try:
        return (rss_bytes() - before) / count
    finally:
        old.stop()


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["moonshard"] and len(argv) == 3:
        value = asyncio.run(_moonshard(argv[1], int(argv[2])))
    elif argv[:1] == ["old"] and len(argv) == 2:
        value = _old(int(argv[1]))
    else:
        raise SystemExit("usage: memory_probe moonshard <url> <tenants> | old <tenants>")
    print(json.dumps({"bytes_per_tenant": value}))


if __name__ == "__main__":
    main(sys.argv[1:])
