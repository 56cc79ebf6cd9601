"""A closed-loop load driver: a fixed number of calls in flight, each lane awaiting its call."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
from collections.abc import Awaitable, Callable

from moonshard.bench.measure import percentile

__all__ = ["LoadResult", "closed_loop"]


@dataclasses.dataclass(frozen=True, slots=True)
class LoadResult:
    """What one closed-loop run did: how many calls, in how long, and each call's latency."""

    calls: int
    seconds: float
    latencies: tuple[float, ...]

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def latency(self, fraction: float) -> float:
        """The latency below which ``fraction`` of the calls finished, in seconds."""
        return percentile(list(self.latencies), fraction)


async def closed_loop(
    call: Callable[[int, int], Awaitable[object]], *, in_flight: int,
    seconds: float = math.inf, count: int | None = None,
) -> LoadResult:
    """Runs ``call(lane, number)`` from ``in_flight`` lanes for about ``seconds``, or until
    ``count`` calls have been made.

    ``number`` counts calls across all lanes (0, 1, 2, ...); ``lane`` is the caller's index,
    for work that must not overlap with itself (one tenant's VM per lane). Each lane starts
    its next call when its previous one returns, so exactly ``in_flight`` calls are
    outstanding until the deadline; calls still running then are awaited and counted.
    """
    numbers = itertools.count()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def lane(index: int) -> None:
        while time.perf_counter() < deadline:
            number = next(numbers)
            if count is not None and number >= count:
                return
            started = time.perf_counter()
            await call(index, number)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as lanes:
        for index in range(in_flight):
            lanes.create_task(lane(index))
    return LoadResult(len(latencies), time.perf_counter() - started, tuple(latencies))
