"""Where a worker's Lua steps run: a small thread pool, every step watched by the hard limit.

Each step is labelled with its tenant, so a step stuck past the hard wall-clock limit is
reported with the tenant it belongs to, as data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from moonshard.sandbox.vm import TenantVM
from moonshard.sandbox.watchdog import StepWatchdog
from moonshard.tenants import TenantId

__all__ = ["LuaSteps", "OnStuck"]

_T = TypeVar("_T")

OnStuck = Callable[[float, TenantId | None, str], None]
"""Told, on the watchdog's thread, that a Lua call of a tenant is stuck past the hard limit:
(seconds so far, the tenant, the step's label)."""


class LuaSteps:
    """The Lua threads and the watchdog of one worker. Enter it to start the watchdog."""

    __slots__ = ("_executor", "_hard_limit", "_ids", "_labels", "_on_stuck", "_watchdog")

    def __init__(self, index: int, threads: int, hard_limit: float, on_stuck: OnStuck) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix=f"moonshard-lua-{index}")
        self._hard_limit = hard_limit
        self._on_stuck = on_stuck
        self._watchdog = StepWatchdog(hard_limit, self._stuck)
        # Which tenant each running step belongs to, by its watchdog label.
        self._labels: dict[str, TenantId] = {}
        self._ids = itertools.count()

    def __enter__(self) -> LuaSteps:
        self._watchdog.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._watchdog.__exit__(kind, error, trace)

    def shutdown(self, *, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def runner(self, tenant: TenantId, what: str, vm: Callable[[], TenantVM | None] | None = None,
               ) -> Callable[[Callable[[], _T]], Awaitable[_T]]:
        """A step runner for ``tenant``'s ``what``; a step that outlived the hard limit (only
        possible where the process could not be ended: the thread topology) marks the VM
        ``vm()`` gives as broken."""
        loop = asyncio.get_running_loop()
        labels, hard_limit = self._labels, self._hard_limit

        async def run_step(step: Callable[[], _T]) -> _T:
            label = f"{tenant} {what} #{next(self._ids)}"
            labels[label] = tenant
            started = time.monotonic()
            try:
                result = await loop.run_in_executor(self._executor, self._watchdog.watch, step,
                                                    label)
            finally:
                labels.pop(label, None)
            if vm is not None and time.monotonic() - started > hard_limit:
                current = vm()
                if current is not None:
                    current.broken = "wall"
            return result

        return run_step

    def _stuck(self, seconds: float, label: str) -> None:
        self._on_stuck(seconds, self._labels.get(label), label)
