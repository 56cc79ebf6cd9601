"""The thread topology: a worker on its own thread with its own event loop.

A thread cannot be killed: a Lua call stuck in C holds its executor thread until it returns.
Its tenant is abandoned (quarantined, its callers answered, its VM left to the stuck call) so
the worker's other tenants carry on, on the remaining Lua threads. For hard isolation use the
process topology.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable

from moonshard.contracts.worker import (
    Reply,
    Request,
    Stop,
    TenantLog,
    WorkerConfig,
    WorkerHandle,
)
from moonshard.errors import MoonshardError, WorkerCrashed
from moonshard.store import open_store
from moonshard.tenants import TenantId
from moonshard.topology.calls import PendingCalls
from moonshard.worker.core import WorkerCore
from moonshard.worker.handoff import LoopBatches

__all__ = ["ThreadWorker"]

class ThreadWorker(WorkerHandle):
    """One incarnation: a thread running a ``WorkerCore`` on a loop of its own."""

    def __init__(self, config: WorkerConfig, log: TenantLog) -> None:
        self._config = config
        self._log = log
        self._calls = PendingCalls()
        self._core: WorkerCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._exit: asyncio.Future[str] | None = None
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"moonshard-worker-{config.index}")

    @property
    def pid(self) -> int | None:
        return None

    @property
    def guilty(self) -> TenantId | None:
        return None  # a stuck tenant is abandoned inside the worker, which lives on

    async def start(self) -> None:
        owner = asyncio.get_running_loop()
        self._exit = owner.create_future()
        self._owner = owner
        self._outbox = LoopBatches(owner, self._settle)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._start_error is not None:
            raise self._start_error

    def _main(self) -> None:
        outcome = "stopped"
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            outcome = f"crashed: {type(error).__name__}: {error}"
            if not self._ready.is_set():
                self._start_error = error
        finally:
            self._ready.set()
            with contextlib.suppress(RuntimeError):  # the owner's loop is gone already
                self._owner.call_soon_threadsafe(self._finish, outcome)

    def _finish(self, outcome: str) -> None:
        assert self._exit is not None
        self._outbox.flush()  # answers given before the end are answers, not losses
        if not self._exit.done():
            self._exit.set_result(outcome)
        self._calls.crashed(WorkerCrashed(f"worker {self._config.index} ended: {outcome}"))

    async def _serve(self) -> None:
        async with await open_store(self._config.database_url) as store:
            self._core = WorkerCore(self._config, store, self._log)
            self._loop = asyncio.get_running_loop()
            self._inbox = LoopBatches(self._loop, self._take_requests)
            # The tasks of the requests being handled (the loop holds tasks weakly).
            self._running: set[asyncio.Task[Reply]] = set()
            self._ready.set()
            await self._core.run()

    async def request(self, request: Request,
                      on_start: Callable[[], None] | None = None) -> Reply:
        core, loop = self._core, self._loop
        if core is None or loop is None or loop.is_closed() or (
                self._exit is not None and self._exit.done()):
            raise WorkerCrashed(f"worker {self._config.index} is not running")
        call_id, reply = self._calls.open(on_start)
        try:
            self._inbox.post((call_id, request))
        except RuntimeError:
            self._calls.forget(call_id)
            raise WorkerCrashed(f"worker {self._config.index} is not running") from None
        try:
            return await reply
        finally:
            self._calls.forget(call_id)

    # -- on the worker's loop ----------------------------------------------------------------
    def _take_requests(self, requests: list[tuple[int, Request]]) -> None:
        assert self._core is not None
        assert self._loop is not None
        core, calls, loop, running = self._core, self._calls, self._loop, self._running
        for call_id, request in requests:
            def started(call_id: int = call_id) -> None:
                calls.note_started(call_id)

            task = loop.create_task(core.handle(request, started))
            running.add(task)
            task.add_done_callback(functools.partial(self._answer, call_id))

    def _answer(self, call_id: int, done: asyncio.Task[Reply]) -> None:
        self._running.discard(done)
        if done.cancelled():
            return  # the worker's loop ended first: its end fails the call
        error = done.exception()
        if error is None:
            answer: tuple[int, Reply | None, MoonshardError | None] = (
                call_id, done.result(), None)
        elif isinstance(error, MoonshardError):
            answer = (call_id, None, error)
        else:
            answer = (call_id, None, MoonshardError(
                f"internal error in the worker: {type(error).__name__}"))
        # The owner's loop is gone: so is whoever waited.
        with contextlib.suppress(RuntimeError):
            self._outbox.post(answer)

    # -- on the owner's loop -----------------------------------------------------------------
    def _settle(self, answers: list[tuple[int, Reply | None, MoonshardError | None]]) -> None:
        calls = self._calls
        for call_id, reply, error in answers:
            if error is None:
                assert reply is not None
                calls.answered(call_id, reply)
            else:
                calls.failed(call_id, error)

    async def wait_exit(self) -> str:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def kill(self) -> None:
        # A thread cannot be killed; stopping it at once is the nearest thing.
        await self.stop(0.0)

    async def stop(self, deadline: float) -> None:
        # The loop may end before the stop's answer crosses back: ending is the answer.
        with contextlib.suppress(WorkerCrashed):
            await self.request(Stop(deadline))
        await self.wait_exit()
