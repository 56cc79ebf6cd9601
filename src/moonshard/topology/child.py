"""The worker process: ``python -c 'from moonshard.topology.child import main; main()' FD PPID``.

Its command line holds only the socket to its parent and the parent's pid: its configuration
(with the database URL, which may hold a password) is the first frame on that socket, so
``ps`` shows no secret. It ends itself when its parent dies: the kernel sends it SIGKILL
(``PR_SET_PDEATHSIG``, Linux), and the end of the socket stops it too.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time

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
    error_to_wire,
)
from moonshard.contracts.worker import Request, Stop
from moonshard.store import open_store
from moonshard.tenants import TenantId
from moonshard.topology.framing import FrameWriter, read_frame
from moonshard.worker.core import WorkerCore

__all__ = ["EXIT_STUCK", "main"]

# The exit status of a worker that ended itself because a Lua call was stuck.
EXIT_STUCK = 75
_PR_SET_PDEATHSIG = 1


class _Child:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._codec = WireCodec()
        self._frames: FrameWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def _send(self, frame: Frame) -> None:
        # The frame writer belongs to the loop; templates log (and runs start) on the
        # worker's Lua threads, so a frame from another thread is handed to the loop.
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._send_on_loop, frame)
        else:
            self._send_on_loop(frame)

    def _send_on_loop(self, frame: Frame) -> None:
        # Frames of one turn of the loop go out in one write.
        if self._frames is not None and not self._frames.writer.is_closing():
            self._frames.send(frame)

    def _log(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        self._send(Log(tenant, level, template, message))

    def _on_stuck(self, seconds: float, tenant: TenantId | None, label: str) -> None:
        # Called on the watchdog's thread while a Lua call is stuck in C: tell the parent who
        # it was, then end the process, the only sure way to stop that call.
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._send_on_loop, Stuck(tenant, label, seconds))
        time.sleep(0.3)  # lets the loop send the frame
        os._exit(EXIT_STUCK)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        reader, writer = await asyncio.open_unix_connection(sock=self._sock)
        self._frames = frames = FrameWriter(writer, self._codec)
        first = await read_frame(reader, self._codec)
        if not isinstance(first, Configure):
            return  # the parent went away before configuring this worker
        config = first.config
        logging.basicConfig(level=logging.WARNING,
                            format=f"worker {config.index} %(levelname)s %(name)s: %(message)s")
        async with await open_store(config.database_url) as store:
            await self._serve_core(WorkerCore(config, store, self._log, self._on_stuck),
                                   reader)
            frames.flush()
            await writer.drain()

    async def _serve_core(self, core: WorkerCore, reader: asyncio.StreamReader) -> None:
        async with asyncio.TaskGroup() as tasks:
            runner = tasks.create_task(core.run())
            self._send(Ready(os.getpid()))
            while True:
                frame = await read_frame(reader, self._codec)
                if not isinstance(frame, Call):
                    # The parent is gone (or spoke nonsense): stop at once.
                    tasks.create_task(core.handle(Stop(deadline=0.0)))
                    break
                tasks.create_task(self._serve(core, frame.id, frame.request))
                if isinstance(frame.request, Stop):
                    break
            await runner

    async def _serve(self, core: WorkerCore, call_id: int, request: Request) -> None:
        def started() -> None:
            self._send(Started(call_id))

        try:
            reply = await core.handle(request, started)
        except Exception as error:
            self._send(Failed(call_id, error_to_wire(error)))
        else:
            self._send(Answer(call_id, reply))
        if self._frames is not None:
            await self._frames.drain()


def _die_with_parent(parent: int) -> None:
    """Asks the kernel to SIGKILL this process when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # elsewhere the end of the socket is what ends a worker
    if os.getppid() != parent:
        os._exit(0)  # the parent died before the request above took effect


def main() -> None:
    # The parent decides when a worker stops: Ctrl-C in a terminal (SIGINT to the whole
    # process group) or a service manager's SIGTERM to every process must not kill a worker
    # mid-event; the parent drains it, and a gone parent ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    _die_with_parent(int(sys.argv[2]))
    asyncio.run(_Child(sock).run())


if __name__ == "__main__":
    main()
