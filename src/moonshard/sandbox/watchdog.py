"""A hard wall-clock limit on single Lua calls, enforced from outside the call.

Code running in C inside Lua (a pattern match, say) never reaches a hook, so the only sure way
to stop it is to end the process that runs it. The watchdog watches from its own thread and
calls ``on_stuck`` once for each step that has run longer than the limit; where a process
can be ended, ``on_stuck`` ends it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

__all__ = ["StepWatchdog"]

_T = TypeVar("_T")


class StepWatchdog:
    """Times the steps it runs, from any thread; reports each one stuck past ``limit``."""

    __slots__ = ("_ids", "_lock", "_on_stuck", "_running", "_stop", "_thread", "limit")

    def __init__(self, limit: float, on_stuck: Callable[[float, str], None]) -> None:
        self.limit = limit
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        self._ids = itertools.count()
        # step id -> (start time, label); an entry is removed when reported or finished.
        self._running: dict[int, tuple[float, str]] = {}
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

    def watch(self, step: Callable[[], _T], label: str = "") -> _T:
        """Runs ``step`` on the calling thread, watched."""
        step_id = next(self._ids)
        with self._lock:
            self._running[step_id] = (time.monotonic(), label)
        try:
            return step()
        finally:
            with self._lock:
                self._running.pop(step_id, None)

    async def run_step(self, step: Callable[[], _T]) -> _T:
        """A StepRunner that runs the step inline (on the event loop's thread), watched."""
        return self.watch(step)

    def _watch(self) -> None:
        tick = min(0.05, self.limit / 10)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                stuck = [(step_id, now - started, label)
                         for step_id, (started, label) in self._running.items()
                         if now - started > self.limit]
                for step_id, _, _ in stuck:
                    del self._running[step_id]
            for _, seconds, label in stuck:
                self._on_stuck(seconds, label)
