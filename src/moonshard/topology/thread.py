"""The thread topology: a worker on its own thread with its own event loop.

A thread cannot be killed: a Lua call stuck in C holds its executor thread until it returns,
and the VM is discarded then. For hard isolation use the process topology.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from moonshard.errors import WorkerCrashed
from moonshard.store import open_store
from moonshard.worker.api import WorkerHandle
from moonshard.worker.core import TenantLog, WorkerConfig, WorkerCore
from moonshard.worker.messages import Request, Stop

__all__ = ["ThreadWorker"]


class ThreadWorker(WorkerHandle):
    """One incarnation: a thread running a ``WorkerCore`` on a loop of its own."""

    def __init__(self, config: WorkerConfig, log: TenantLog) -> None:
        self._config = config
        self._log = log
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

    async def start(self) -> None:
        owner = asyncio.get_running_loop()
        self._exit = owner.create_future()
        self._owner = owner
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
            self._owner.call_soon_threadsafe(self._finish, outcome)

    def _finish(self, outcome: str) -> None:
        assert self._exit is not None
        if not self._exit.done():
            self._exit.set_result(outcome)

    async def _serve(self) -> None:
        async with await open_store(self._config.database_url) as store:
            self._core = WorkerCore(self._config, store, self._log)
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._core.run()

    async def request(self, request: Request, on_start: Callable[[], None] | None = None) -> Any:
        core, loop, owner = self._core, self._loop, asyncio.get_running_loop()
        if core is None or loop is None or loop.is_closed():
            raise WorkerCrashed(f"worker {self._config.index} is not running")

        def started() -> None:
            if on_start is not None:
                owner.call_soon_threadsafe(on_start)

        try:
            future = asyncio.run_coroutine_threadsafe(core.handle(request, started), loop)
        except RuntimeError:
            raise WorkerCrashed(f"worker {self._config.index} is not running") from None
        assert self._exit is not None
        reply = asyncio.wrap_future(future)
        done, _ = await asyncio.wait({reply, self._exit}, return_when=asyncio.FIRST_COMPLETED)
        if reply in done:
            return reply.result()
        reply.cancel()
        raise WorkerCrashed(f"worker {self._config.index} ended: {self._exit.result()}")

    async def wait_exit(self) -> str:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def kill(self) -> None:
        # A thread cannot be killed; stopping it at once is the nearest thing.
        await self.request(Stop(deadline=0.0))

    async def stop(self, deadline: float) -> None:
        await self.request(Stop(deadline))
        await self.wait_exit()
