"""The actor of one Ray worker slot: a ``WorkerCore`` with its own store, on the actor's loop.

Ray runs it (``ray.remote(SlotActor)``, see ``topology.ray.handle``) on whichever node its
scheduler picks. Its only argument is the encoded ``Configure`` frame (the database URL may
hold a password, so it is never in the actor's name or options, and never logged). When it
dies Ray builds a new one from the same argument: a fresh incarnation with a fresh store
connection, which reads its timers and outbox from the store like any restarted worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from typing import Any

from moonshard.contracts.wire import (
    Answer,
    Call,
    Configure,
    Failed,
    Frame,
    Log,
    Started,
    Stuck,
    WireCodec,
    error_to_wire,
)
from moonshard.contracts.worker import Request, WorkerConfig
from moonshard.store import open_store
from moonshard.tenants import TenantId
from moonshard.topology.child import EXIT_STUCK
from moonshard.topology.ray.frames import FrameBatches
from moonshard.worker.core import WorkerCore

__all__ = ["SlotActor"]

_log = logging.getLogger(__name__)


class SlotActor:
    """One incarnation of a worker slot. Every method runs on the actor's one event loop."""

    def __init__(self, configure: bytes) -> None:
        frame = WireCodec().decode(configure)
        if not isinstance(frame, Configure):
            raise TypeError(f"a slot actor is configured with Configure, not {type(frame)}")
        self._config: WorkerConfig = frame.config
        self._batches = FrameBatches()
        # Told to the owner by ready(): a successor is recognised by a new one.
        self._incarnation = uuid.uuid4().hex
        self._outbox: list[Frame] = []
        self._waiting: asyncio.Event | None = None
        self._core: WorkerCore | None = None
        self._life: asyncio.Task[None] | None = None
        self._core_ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._served: set[asyncio.Task[None]] = set()

    # -- the owner's calls -----------------------------------------------------------------
    async def ready(self) -> dict[str, Any]:
        """Starts the worker if it has not started; says where and which incarnation it is."""
        await self._started()
        import ray  # noqa: PLC0415 - only inside an actor, where Ray is running

        context = ray.get_runtime_context()
        return {"incarnation": self._incarnation, "pid": os.getpid(),
                "node_id": context.get_node_id(),
                "node": ray.util.get_node_ip_address()}

    async def submit(self, batch: bytes) -> None:
        """Takes a batch of calls; each runs as its own task, started in the batch's order
        (the owner sends one batch at a time, so the order of sending is kept)."""
        core = await self._started()
        for frame in self._batches.decode(batch):
            if isinstance(frame, Call):
                task = asyncio.create_task(self._serve(core, frame.id, frame.request))
                self._served.add(task)
                task.add_done_callback(self._served.discard)

    async def drain(self) -> tuple[bytes, bool]:
        """Waits until there are frames for the owner (or the worker ended); returns them
        and whether the worker has ended."""
        await self._started()
        waiting = self._waiting
        assert waiting is not None
        assert self._life is not None
        while not self._outbox and not self._life.done():
            waiting.clear()
            await waiting.wait()
        frames, self._outbox = self._outbox, []
        return self._batches.encode(frames), self._life.done()

    # -- inside ----------------------------------------------------------------------------
    async def _started(self) -> WorkerCore:
        if self._life is None:
            self._loop = asyncio.get_running_loop()
            self._waiting = asyncio.Event()
            self._core_ready = asyncio.Event()
            self._life = asyncio.create_task(self._live())
            self._life.add_done_callback(lambda _: self._wake())
        assert self._core_ready is not None
        ready = asyncio.ensure_future(self._core_ready.wait())
        await asyncio.wait({ready, self._life}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._core is None:
            error = self._life.exception() if self._life.done() else None
            # Said without the configuration: it holds the database URL.
            raise RuntimeError(f"worker {self._config.index} could not start: "
                               f"{type(error).__name__}: {error}")
        return self._core

    async def _live(self) -> None:
        config = self._config
        async with await open_store(config.database_url) as store:
            self._core = WorkerCore(config, store, self._tenant_log, self._on_stuck)
            assert self._core_ready is not None
            self._core_ready.set()
            await self._core.run()
            # Whatever was answered is handed over before the owner ends this incarnation.
            await asyncio.gather(*self._served, return_exceptions=True)

    def _push(self, frame: Frame) -> None:
        self._outbox.append(frame)
        self._wake()

    def _wake(self) -> None:
        if self._waiting is not None:
            self._waiting.set()

    def _tenant_log(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        self._push(Log(tenant, level, template, message))

    def _on_stuck(self, seconds: float, tenant: TenantId | None, label: str) -> None:
        # On the watchdog's thread, while a Lua call is stuck in C: say who it was, then end
        # the process (the only sure way to stop that call); Ray starts a successor.
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._push, Stuck(tenant, label, seconds))
        time.sleep(0.5)  # lets the loop hand the frame to the owner's drain
        os._exit(EXIT_STUCK)

    async def _serve(self, core: WorkerCore, call_id: int, request: Request) -> None:
        def started() -> None:
            self._push(Started(call_id))

        try:
            reply = await core.handle(request, started)
        except Exception as error:
            self._push(Failed(call_id, error_to_wire(error)))
        else:
            self._push(Answer(call_id, reply))
