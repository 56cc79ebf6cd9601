"""A hard wall-clock limit on single Lua calls, enforced from outside the call.

Code running in C inside Lua (a pattern match, say) never reaches a hook, so the only sure way
to stop it is to end the process that runs it. The watchdog watches from its own thread and
calls ``on_stuck`` when one step has run longer than the limit; ``on_stuck`` ends the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

__all__ = ["StepWatchdog"]

_T = TypeVar("_T")


class StepWatchdog:
    """Times each step it runs; past ``limit`` seconds in one step, calls ``on_stuck(seconds)``."""

    __slots__ = ("_lock", "_on_stuck", "_started", "_stop", "_thread", "limit")

    def __init__(self, limit: float, on_stuck: Callable[[float], None]) -> None:
        self.limit = limit
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        self._started: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="moonshard-watchdog",
                                        daemon=True)

    def __enter__(self) -> StepWatchdog:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    async def run_step(self, step: Callable[[], _T]) -> _T:
        """A StepRunner: runs the step inline, watched."""
        with self._lock:
            self._started = time.monotonic()
        try:
            return step()
        finally:
            with self._lock:
                self._started = None

    def _watch(self) -> None:
        tick = min(0.05, self.limit / 10)
        while not self._stop.wait(tick):
            with self._lock:
                started = self._started
            if started is not None and time.monotonic() - started > self.limit:
                self._on_stuck(time.monotonic() - started)
                return
