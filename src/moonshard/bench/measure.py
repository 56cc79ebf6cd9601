"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable

__all__ = ["Figure", "rss_bytes", "time_calls"]


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure, with the baseline it is compared to (when there is one)."""

    suite: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def time_calls(call: Callable[[], object], count: int) -> list[float]:
    """Seconds taken by each of ``count`` calls."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def mean(samples: list[float]) -> float:
    return statistics.fmean(samples)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
