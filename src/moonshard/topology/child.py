"""The worker process: ``python -m moonshard.topology.child CONFIG_JSON FD``.

It needs only its configuration and the socket to its parent; everything else it builds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from moonshard.store import open_store
from moonshard.tenants import TenantId
from moonshard.topology.framing import read_frame, write_frame
from moonshard.topology.wire import error_to_wire, reply_to_wire
from moonshard.worker.core import WorkerConfig, WorkerCore
from moonshard.worker.messages import Stop, request_from_wire

__all__ = ["EXIT_STUCK", "main"]

# The exit status of a worker that ended itself because a Lua call was stuck.
EXIT_STUCK = 75


class _Child:
    def __init__(self, config: WorkerConfig, sock: socket.socket) -> None:
        self._config = config
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            write_frame(self._writer, message)

    def _log(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        self._send({"log": [str(tenant), level, template, message]})

    def _on_stuck(self, seconds: float, label: str) -> None:
        # Called on the watchdog's thread while a Lua call is stuck in C: tell the parent who
        # it was, then end the process, the only sure way to stop that call.
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._send, {"stuck": label, "seconds": seconds})
        time.sleep(0.3)  # lets the loop send the frame
        os._exit(EXIT_STUCK)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_unix_connection(sock=self._sock)
        self._writer = writer
        async with await open_store(self._config.database_url) as store:
            core = WorkerCore(self._config, store, self._log, self._on_stuck)
            async with asyncio.TaskGroup() as tasks:
                runner = tasks.create_task(core.run())
                self._send({"ready": os.getpid()})
                while True:
                    frame = await read_frame(reader)
                    if frame is None:
                        # The parent is gone: stop at once.
                        tasks.create_task(core.handle(Stop(deadline=0.0)))
                        break
                    request = request_from_wire(frame["req"])
                    tasks.create_task(self._serve(core, frame["id"], request))
                    if isinstance(request, Stop):
                        break
                await runner
            await writer.drain()

    async def _serve(self, core: WorkerCore, request_id: int, request: Any) -> None:
        def started() -> None:
            self._send({"id": request_id, "started": True})

        try:
            reply = await core.handle(request, started)
        except Exception as error:
            self._send({"id": request_id, "err": error_to_wire(error)})
        else:
            self._send({"id": request_id, "ok": reply_to_wire(reply)})
        if self._writer is not None:
            await self._writer.drain()


def main() -> None:
    # The parent decides when a worker stops: Ctrl-C in a terminal (SIGINT to the whole
    # process group) or a service manager's SIGTERM to every process must not kill a worker
    # mid-event; the parent drains it, and a gone parent ends it through the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = WorkerConfig.from_wire(json.loads(sys.argv[1]))
    sock = socket.socket(fileno=int(sys.argv[2]))
    logging.basicConfig(level=logging.WARNING,
                        format=f"worker {config.index} %(levelname)s %(name)s: %(message)s")
    asyncio.run(_Child(config, sock).run())


if __name__ == "__main__":
    main()
