"""How busy the rest of the machine was while a benchmark ran: other work moves the figures."""

from __future__ import annotations

import os
import resource
import time
from types import TracebackType

__all__ = ["OtherCpu"]


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process of the machine has used since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (worker processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class OtherCpu:
    """``with OtherCpu() as other: ...``; then ``other.share``: the CPU that processes other
    than this one and its children used during the block, as a share of all cores (0 to 1).

    None where /proc/stat cannot be read.
    """

    __slots__ = ("_busy", "_own", "_wall", "share")

    def __init__(self) -> None:
        self.share: float | None = None
        self._busy: float | None = None
        self._own = 0.0
        self._wall = 0.0

    def __enter__(self) -> OtherCpu:
        self._busy = _machine_busy_seconds()
        self._own = _own_seconds()
        self._wall = time.monotonic()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        busy = _machine_busy_seconds()
        wall = time.monotonic() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return
        others = (busy - self._busy) - (_own_seconds() - self._own)
        self.share = round(min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1)))), 3)
