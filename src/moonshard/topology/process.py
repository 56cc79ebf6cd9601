"""The process topology: a worker in a child process, spoken to over a socket pair.

No TCP port is opened. A child that dies (an exception, SIGKILL, the kernel's OOM killer, or
its own watchdog ending it when a Lua call is stuck in C) fails the requests it had started;
its supervisor starts a successor that takes the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
from collections.abc import Callable
from typing import Any

from moonshard.errors import WorkerCrashed
from moonshard.tenants import TenantId
from moonshard.topology.child import EXIT_STUCK
from moonshard.topology.framing import read_frame, write_frame
from moonshard.topology.wire import error_from_wire, reply_from_wire
from moonshard.worker.api import WorkerHandle
from moonshard.worker.core import TenantLog, WorkerConfig
from moonshard.worker.messages import Request, Stop, request_to_wire

__all__ = ["ProcessWorker"]


class _Pending:
    __slots__ = ("on_start", "reply", "started")

    def __init__(self, reply: asyncio.Future[Any], on_start: Callable[[], None] | None) -> None:
        self.reply = reply
        self.on_start = on_start
        self.started = False


class ProcessWorker(WorkerHandle):
    """One incarnation: a child process running a ``WorkerCore``."""

    def __init__(self, config: WorkerConfig, log: TenantLog) -> None:
        self._config = config
        self._log = log
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[int] | None = None
        self._stuck: str | None = None
        self._exit: str | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Not "-m moonshard.topology.child": importing the package already imports that
            # module, and runpy would warn about running it a second time on every start.
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from moonshard.topology.child import main; main()",
                json.dumps(self._config.to_wire()), str(child_end.fileno()),
                pass_fds=(child_end.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                # Its own session: a Ctrl-C at the terminal reaches the parent only, which
                # then drains and stops its workers in order.
                start_new_session=True)
        finally:
            child_end.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=parent_end)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader))
        waiting: set[asyncio.Future[Any]] = {self._ready, self._reader_task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.done():
            raise WorkerCrashed(f"worker {self._config.index} died while starting")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Owned by this handle: routes the child's frames until the child is gone."""
        try:
            while (frame := await read_frame(reader)) is not None:
                self._route(frame)
        finally:
            assert self._process is not None
            code = await self._process.wait()
            self._exit = "stopped" if code == 0 else (
                f"killed by the watchdog ({self._stuck})" if code == EXIT_STUCK
                else f"exited with status {code}")
            crash = WorkerCrashed(f"worker {self._config.index} crashed: {self._exit}",
                                  stuck=self._stuck)
            for pending in self._pending.values():
                if not pending.reply.done():
                    pending.reply.set_exception(crash)
            self._pending.clear()

    def _route(self, frame: dict[str, Any]) -> None:
        if "log" in frame:
            tenant, level, template, message = frame["log"]
            self._log(TenantId.parse(tenant), level, template, message)
            return
        if "ready" in frame:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(int(frame["ready"]))
            return
        if "stuck" in frame:
            self._stuck = str(frame["stuck"])
            return
        pending = self._pending.get(frame["id"])
        if pending is None:
            return
        if frame.get("started"):
            pending.started = True
            if pending.on_start is not None:
                pending.on_start()
            return
        del self._pending[frame["id"]]
        if pending.reply.done():
            return
        if "err" in frame:
            pending.reply.set_exception(error_from_wire(frame["err"]))
        else:
            pending.reply.set_result(reply_from_wire(frame["ok"]))

    async def request(self, request: Request, on_start: Callable[[], None] | None = None) -> Any:
        if self._writer is None or self._exit is not None or self._writer.is_closing():
            raise WorkerCrashed(f"worker {self._config.index} is not running")
        request_id = next(self._ids)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(reply, on_start)
        write_frame(self._writer, {"id": request_id, "req": request_to_wire(request)})
        return await reply

    async def wait_exit(self) -> str:
        assert self._reader_task is not None
        await asyncio.shield(self._reader_task)
        assert self._exit is not None
        return self._exit

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
        await self.wait_exit()

    async def stop(self, deadline: float) -> None:
        try:
            await asyncio.wait_for(self.request(Stop(deadline)), deadline + 5.0)
        except (WorkerCrashed, TimeoutError):
            await self.kill()
        await self.wait_exit()
