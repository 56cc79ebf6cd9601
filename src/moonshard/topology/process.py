"""The process topology: a worker in a child process, spoken to over a socket pair.

No TCP port is opened, and nothing secret is on the child's command line: its configuration
is the first frame on the socket. A child that dies (an exception, SIGKILL, the kernel's OOM
killer, or its own watchdog ending it when a Lua call is stuck in C) fails the requests it had
started; its supervisor starts a successor that takes the rest. A child whose event loop stops
answering (frozen, or stuck in C while holding the GIL) misses its heartbeat and is killed,
which the supervisor then treats as any crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from moonshard.contracts.wire import (
    Answer,
    Call,
    Configure,
    Failed,
    Frame,
    Log,
    Ready,
    Started,
    Stuck,
    WireCodec,
    error_from_wire,
)
from moonshard.contracts.worker import (
    Ping,
    Reply,
    Request,
    Stop,
    TenantLog,
    WorkerConfig,
    WorkerHandle,
)
from moonshard.errors import WorkerCrashed
from moonshard.tenants import TenantId
from moonshard.topology.calls import PendingCalls
from moonshard.topology.child import EXIT_STUCK
from moonshard.topology.framing import FrameWriter, read_frame, write_frame

__all__ = ["Liveness", "ProcessWorker"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Liveness:
    """The heartbeat: a ``Ping`` every ``interval`` seconds, answered within ``deadline``."""

    interval: float = 1.0
    deadline: float = 10.0


class ProcessWorker(WorkerHandle):
    """One incarnation: a child process running a ``WorkerCore``."""

    def __init__(self, config: WorkerConfig, log: TenantLog,
                 liveness: Liveness | None = None) -> None:
        self._config = config
        self._log = log
        self._liveness = liveness or Liveness()
        self._codec = WireCodec()
        self._calls = PendingCalls()
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames: FrameWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[int] | None = None
        self._stuck: Stuck | None = None
        self._unresponsive = False
        self._exit: str | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def guilty(self) -> TenantId | None:
        """The tenant whose stuck Lua call made this incarnation end itself, if one did."""
        return self._stuck.tenant if self._stuck is not None else None

    async def start(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Not "-m moonshard.topology.child": importing the package already imports that
            # module, and runpy would warn about running it a second time on every start.
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from moonshard.topology.child import main; main()",
                str(child_end.fileno()), str(os.getpid()),
                pass_fds=(child_end.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                # Its own session: a Ctrl-C at the terminal reaches the parent only, which
                # then drains and stops its workers in order.
                start_new_session=True)
        finally:
            child_end.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=parent_end)
        write_frame(self._writer, self._codec, Configure(self._config))
        self._frames = FrameWriter(self._writer, self._codec)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader))
        waiting: set[asyncio.Future[Any]] = {self._ready, self._reader_task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.done():
            raise WorkerCrashed(f"worker {self._config.index} died while starting")
        self._heartbeat_task = asyncio.create_task(self._heartbeat())

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Owned by this handle: routes the child's frames until the child is gone."""
        at_end = False
        try:
            while (frame := await read_frame(reader, self._codec)) is not None:
                self._route(frame)
            at_end = True  # the child closed its end: it is exiting
        finally:
            assert self._process is not None
            if not at_end and self._process.returncode is None:
                # Cancelled (its owner's loop is closing) or a broken frame: the child would
                # never be told to stop, and waiting for it would never end.
                self._process.kill()
            code = await self._process.wait()
            if self._heartbeat_task is not None:
                self._heartbeat_task.cancel()
            self._exit = "stopped" if code == 0 else (
                f"killed by the watchdog ({self._stuck.label})"
                if code == EXIT_STUCK and self._stuck is not None
                else "killed: its event loop stopped answering" if self._unresponsive
                else f"exited with status {code}")
            self._calls.crashed(WorkerCrashed(
                f"worker {self._config.index} crashed: {self._exit}",
                stuck=self._stuck.label if self._stuck is not None else None))

    def _route(self, frame: Frame) -> None:
        match frame:
            case Log(tenant, level, template, message):
                self._log(tenant, level, template, message)
            case Ready(pid):
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(pid)
            case Stuck():
                self._stuck = frame
            case Started(call_id):
                self._calls.started(call_id)
            case Answer(call_id, reply):
                self._calls.answered(call_id, reply)
            case Failed(call_id, error):
                self._calls.failed(call_id, error_from_wire(error))

    async def _heartbeat(self) -> None:
        """Owned by this handle: kills the child once its loop misses a heartbeat."""
        liveness = self._liveness
        while True:
            await asyncio.sleep(liveness.interval)
            try:
                await asyncio.wait_for(self.request(Ping()), liveness.deadline)
            except TimeoutError:
                _log.error("worker %s did not answer its heartbeat within %.1f s; killing it",
                           self._config.index, liveness.deadline)
                self._unresponsive = True
                if self._process is not None and self._process.returncode is None:
                    self._process.kill()
                return
            except WorkerCrashed:
                return

    async def request(self, request: Request,
                      on_start: Callable[[], None] | None = None) -> Reply:
        if self._writer is None or self._exit is not None or self._writer.is_closing():
            raise WorkerCrashed(f"worker {self._config.index} is not running")
        frames = self._frames
        assert frames is not None
        call_id, reply = self._calls.open(on_start)
        try:
            frames.send(Call(call_id, request))
            return await reply
        finally:
            self._calls.forget(call_id)

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
        if self._heartbeat_task is not None:
            # A worker draining a long event may answer late; its stop has its own deadline.
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        try:
            await asyncio.wait_for(self.request(Stop(deadline)), deadline + 5.0)
        except (WorkerCrashed, TimeoutError):
            await self.kill()
        await self.wait_exit()
