"""Where a worker's Lua steps run: a few Lua threads, every step watched by the hard limit.

Each step is labelled with its tenant, so a step stuck past the hard wall-clock limit is
reported with the tenant it belongs to, as data. The threads hand finished steps back to the
worker's loop in batches: one wake-up of the loop carries every step finished since the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from moonshard.sandbox.cpualarm import CpuAlarm
from moonshard.sandbox.vm import HOOK_COUNT, TenantVM
from moonshard.sandbox.watchdog import StepWatchdog
from moonshard.tenants import TenantId
from moonshard.worker.handoff import LoopBatches

__all__ = ["LuaSteps", "OnStuck"]

_T = TypeVar("_T")

OnStuck = Callable[[float, TenantId | None, str], None]
"""Told, on the watchdog's thread, that a Lua call of a tenant is stuck past the hard limit:
(seconds so far, the tenant, the step's label)."""

# A queued step: what to run, its label, and the future (of the worker's loop) it settles.
_Job = tuple[Callable[[], Any], str, "asyncio.Future[Any]"]


# A finished step: its future, whether it succeeded, and its value or error.
_Done = tuple["asyncio.Future[Any]", bool, Any]


def _settle(done: list[_Done]) -> None:
    """On the worker's loop: settles the futures of finished steps."""
    for future, ok, value in done:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class LuaSteps:
    """The Lua threads and the watchdog of one worker. Enter it to start them."""

    __slots__ = ("_finished", "_hard_limit", "_ids", "_index", "_jobs", "_labels", "_on_stuck",
                 "_threads", "_watchdog", "cpu_alarm")

    def __init__(self, index: int, threads: int, hard_limit: float, on_stuck: OnStuck) -> None:
        self._index = index
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Daemon threads: a step stuck in C must not hold the process's exit.
        self._threads = [
            threading.Thread(target=self._serve, name=f"moonshard-lua-{index}_{number}",
                             daemon=True)
            for number in range(max(1, threads))]
        self._hard_limit = hard_limit
        self._on_stuck = on_stuck
        self._watchdog = StepWatchdog(hard_limit, self._stuck)
        # Which tenant each running step belongs to, by its watchdog label.
        self._labels: dict[str, TenantId] = {}
        self._ids = itertools.count()
        self._finished: LoopBatches[_Done] | None = None
        # For the VMs whose steps run here: their CPU hooks are set near a budget's end.
        self.cpu_alarm = CpuAlarm.open(HOOK_COUNT)

    def __enter__(self) -> LuaSteps:
        self._watchdog.__enter__()
        if self.cpu_alarm is not None:
            self.cpu_alarm.__enter__()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        # The alarm goes once no step can need it: a step still running (a thread stuck in
        # C, left behind) keeps it, a daemon thread, until the process ends.
        if self.cpu_alarm is not None and not any(t.is_alive() for t in self._threads):
            self.cpu_alarm.close()
        self._watchdog.__exit__(kind, error, trace)

    def shutdown(self, *, wait: bool) -> None:
        """Cancels the steps not started yet and ends the threads (waiting for running steps
        when ``wait``: the CPU alarm still stops a spinning one)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[2].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                if thread.is_alive():
                    thread.join()

    def _serve(self) -> None:
        alarm = self.cpu_alarm
        if alarm is None:
            self._serve_jobs()
            return
        with alarm.attached():
            self._serve_jobs()

    def _serve_jobs(self) -> None:
        jobs, watch = self._jobs, self._watchdog.watch
        while (job := jobs.get()) is not None:
            step, label, future = job
            finished = self._finished
            assert finished is not None
            done: _Done
            try:
                done = (future, True, watch(step, label))
            except BaseException as error:  # handed to the awaiting coroutine
                done = (future, False, error)
            # A closed loop: nobody awaits these any more.
            with contextlib.suppress(RuntimeError):
                finished.post(done)

    def runner(self, tenant: TenantId, what: str, vm: Callable[[], TenantVM | None] | None = None,
               ) -> Callable[[Callable[[], _T]], Awaitable[_T]]:
        """A step runner for ``tenant``'s ``what``; a step that outlived the hard limit (only
        possible where the process could not be ended: the thread topology) marks the VM
        ``vm()`` gives as broken."""
        loop = asyncio.get_running_loop()
        if self._finished is None:
            self._finished = LoopBatches(loop, _settle)
        labels, hard_limit, jobs, ids = self._labels, self._hard_limit, self._jobs, self._ids
        prefix = f"{tenant} {what} #"

        async def run_step(step: Callable[[], _T]) -> _T:
            label = prefix + str(next(ids))
            labels[label] = tenant
            future: asyncio.Future[_T] = loop.create_future()
            started = time.monotonic()
            jobs.put((step, label, future))
            try:
                result = await future
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
