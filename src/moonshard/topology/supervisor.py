"""Supervision, Erlang-style: a worker slot whose incarnations are replaced when they die.

Restarts back off exponentially (the first is immediate, the cap 10 s) under a restart
budget (5 in 30 s by default); past it the slot reports itself unhealthy and keeps trying
slowly. A request that had not started when its incarnation died goes to the successor; a
request that was running fails with ``WorkerCrashed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from moonshard.contracts.worker import Dispatch, Reply, Request, Worker, WorkerHandle
from moonshard.errors import TenantQuarantined, WorkerCrashed, WorkerUnavailable
from moonshard.tenants import TenantId

__all__ = ["Quarantine", "RestartPolicy", "SupervisedWorker"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RestartPolicy:
    budget: int = 5
    window_seconds: float = 30.0
    first_backoff: float = 0.25
    max_backoff: float = 10.0
    # How long a request waits for a worker that is restarting before it gives up.
    request_wait_seconds: float = 30.0

    def backoff(self, consecutive: int) -> float:
        """Delay before restart number ``consecutive`` (1-based) of a run of crashes."""
        if consecutive <= 1:
            return 0.0
        return float(min(self.max_backoff, self.first_backoff * 2.0 ** (consecutive - 2)))


class Quarantine:
    """Tenants whose events crash workers repeatedly are refused for a cool-down."""

    def __init__(self, crashes: int = 2, window_seconds: float = 300.0,
                 cool_down_seconds: float = 60.0) -> None:
        self.crashes = crashes
        self.window_seconds = window_seconds
        self.cool_down_seconds = cool_down_seconds
        self._crashes: dict[TenantId, collections.deque[float]] = {}
        self._until: dict[TenantId, float] = {}

    def check(self, tenant: TenantId) -> None:
        until = self._until.get(tenant)
        if until is None:
            return
        if time.time() >= until:
            del self._until[tenant]
            return
        raise TenantQuarantined(
            f"tenant {tenant} is quarantined for {until - time.time():.0f} more seconds: its "
            f"events crashed a worker {self.crashes} times", until=until)

    def record_crash(self, tenant: TenantId) -> None:
        now = time.time()
        times = self._crashes.setdefault(tenant, collections.deque(maxlen=self.crashes))
        times.append(now)
        if len(times) >= self.crashes and now - times[0] <= self.window_seconds:
            self._until[tenant] = now + self.cool_down_seconds
            times.clear()
            _log.warning("tenant %s quarantined for %.0f s", tenant, self.cool_down_seconds)

    def quarantined(self) -> dict[str, float]:
        now = time.time()
        return {str(tenant): until for tenant, until in self._until.items() if until > now}


class SupervisedWorker(Worker):
    """A pool slot: keeps one incarnation running and routes requests to it."""

    def __init__(self, index: int, spawn: Callable[[], WorkerHandle], policy: RestartPolicy,
                 quarantine: Quarantine) -> None:
        self.index = index
        self._spawn = spawn
        self._policy = policy
        self._quarantine = quarantine
        self._current: WorkerHandle | None = None
        self._up = asyncio.Event()
        self._stopping = False
        self._restarts: collections.deque[float] = collections.deque()
        self._consecutive_crashes = 0
        self.restart_count = 0
        self.last_exit: str | None = None
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._up.is_set() and len(self._recent_restarts()) <= self._policy.budget

    def health(self) -> dict[str, Any]:
        current = self._current
        return {"index": self.index, "up": self._up.is_set(), "healthy": self.healthy,
                "restarts": self.restart_count, "last_exit": self.last_exit,
                "pid": current.pid if current is not None else None,
                "node": current.node if current is not None else None}

    @property
    def current(self) -> WorkerHandle | None:
        return self._current

    async def start(self) -> None:
        first = self._spawn()
        await first.start()
        self._current = first
        self._up.set()
        self._loop_task = asyncio.create_task(self._supervise(first))

    async def _supervise(self, handle: WorkerHandle) -> None:
        """Owned by this slot until ``stop``: replaces each incarnation that ends."""
        while True:
            try:
                outcome = await handle.wait_exit()
            except Exception as error:
                outcome = f"ended with {type(error).__name__}: {error}"
            self._up.clear()
            self._current = None
            self.last_exit = outcome
            if self._stopping:
                return
            handle = await self._restart(outcome)

    def _recent_restarts(self) -> collections.deque[float]:
        cutoff = time.monotonic() - self._policy.window_seconds
        while self._restarts and self._restarts[0] < cutoff:
            self._restarts.popleft()
        return self._restarts

    async def _restart(self, outcome: str) -> WorkerHandle:
        while True:
            self._consecutive_crashes += 1
            over_budget = len(self._recent_restarts()) >= self._policy.budget
            delay = self._policy.max_backoff if over_budget else \
                self._policy.backoff(self._consecutive_crashes)
            _log.warning("worker %s ended (%s); restarting in %.2f s%s", self.index, outcome,
                         delay, " (over its restart budget)" if over_budget else "")
            await asyncio.sleep(delay)
            self._restarts.append(time.monotonic())
            self.restart_count += 1
            handle = self._spawn()
            try:
                await handle.start()
            except Exception as error:
                outcome = f"failed to start: {error}"
                continue
            self._current = handle
            self._up.set()
            asyncio.get_running_loop().call_later(
                self._policy.window_seconds, self._forget_crashes, self.restart_count)
            return handle

    def _forget_crashes(self, restart_count: int) -> None:
        if self.restart_count == restart_count and self._up.is_set():
            self._consecutive_crashes = 0

    async def request(self, request: Request) -> Reply:
        tenant = request.tenant if isinstance(request, Dispatch) else None
        if tenant is not None:
            self._quarantine.check(tenant)
        started = False

        def on_start() -> None:
            nonlocal started
            started = True

        dead: WorkerHandle | None = None
        while True:
            if self._stopping:
                raise WorkerUnavailable(f"worker {self.index} is stopping")
            try:
                if not self._up.is_set():  # the fast path keeps requests in arrival order
                    await asyncio.wait_for(self._up.wait(), self._policy.request_wait_seconds)
            except TimeoutError:
                raise WorkerUnavailable(
                    f"worker {self.index} has been down for "
                    f"{self._policy.request_wait_seconds:.0f} s ({self.last_exit})") from None
            handle = self._current
            if handle is None or handle is dead:
                await asyncio.sleep(0.01)  # the supervisor has not noticed the death yet
                continue
            try:
                return await handle.request(request, on_start)
            except WorkerCrashed:
                if not started:
                    # It never ran: wait for the successor, which takes it.
                    dead = handle
                    await handle.wait_exit()
                    continue
                guilty = handle.guilty
                if tenant is not None and (guilty is None or guilty == tenant):
                    self._quarantine.record_crash(tenant)
                raise

    async def stop(self, deadline: float) -> None:
        self._stopping = True
        handle = self._current
        if handle is not None:
            await handle.stop(deadline)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
