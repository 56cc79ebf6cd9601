"""One incarnation of a Ray worker slot, seen from its owner: a ``WorkerHandle`` over an actor.

Two channels cross to the actor, both carrying ``contracts.wire`` frames in batches: the
owner's ``submit`` calls (one in flight at a time, so the calls keep the order they were made
in; Ray does not order an async actor's calls), and a long-polled ``drain`` that brings back
``Started``, ``Answer``, ``Failed``, ``Log`` and ``Stuck``. The calls live in the same
``PendingCalls`` as the other topologies: when the actor dies (its process, its node, or
killed for missing its heartbeat), every call it had not started fails with
``WorkerCrashed`` before it ran, and the supervisor sends it to the successor, which Ray's
restart policy builds under the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
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
from moonshard.errors import MoonshardError, WorkerCrashed
from moonshard.tenants import TenantId
from moonshard.topology.calls import PendingCalls
from moonshard.topology.process import Liveness
from moonshard.topology.ray.cluster import RayCluster
from moonshard.topology.ray.frames import FrameBatches

__all__ = ["RaySlot", "RayWorker"]

_log = logging.getLogger(__name__)
# How long a successor waits for the incarnation that died to go before ending it.
_STALE_SECONDS = 5.0


@dataclasses.dataclass(slots=True)
class RaySlot:
    """What the incarnations of one slot share: its actor's name and the last incarnation
    seen, so a successor is never mistaken for the actor that just died."""

    index: int
    name: str
    incarnation: str | None = None


class RayWorker(WorkerHandle):
    """One incarnation: the slot's named actor, from the moment it answers until it dies."""

    def __init__(self, config: WorkerConfig, log: TenantLog, cluster: RayCluster,
                 slot: RaySlot, liveness: Liveness | None = None) -> None:
        self._config = config
        self._log = log
        self._cluster = cluster
        self._slot = slot
        self._liveness = liveness or Liveness()
        self._batches = FrameBatches()
        self._calls = PendingCalls()
        self._actor: Any = None
        self._placement: dict[str, Any] = {}
        self._outgoing: list[Frame] = []
        self._have_outgoing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()
        self._stuck: Stuck | None = None
        self._unresponsive = False
        self._exit: str | None = None
        self._stopping = False

    # -- what the supervisor and /healthz see ------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None  # its process may be on another machine: never one to signal from here

    @property
    def node(self) -> str | None:
        placement = self._placement
        if not placement:
            return None
        return f"{placement['node']} (node {placement['node_id'][:12]}, pid {placement['pid']})"

    @property
    def guilty(self) -> TenantId | None:
        return self._stuck.tenant if self._stuck is not None else None

    # -- starting ----------------------------------------------------------------------------
    async def start(self) -> None:
        options = self._cluster.options
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.start_timeout_seconds
        # The incarnation that died may still answer for a moment; one that goes on answering
        # (contact was lost, not the actor) is ended, so the successor starts afresh.
        stale_since: float | None = None
        while True:
            self._actor = self._actor_for_slot()
            remaining = deadline - loop.time()
            try:
                placement = await asyncio.wait_for(self._actor.ready.remote(), remaining)
            except TimeoutError:
                self._kill_actor(restart=False)  # a pending placement is given up too
                raise WorkerCrashed(
                    f"worker {self._slot.index} was not placed and started on the Ray cluster "
                    f"within {options.start_timeout_seconds:g} s (each worker asks for "
                    f"{options.num_cpus:g} CPU)") from None
            except self._cluster.ray.exceptions.RayTaskError as error:
                self._kill_actor(restart=False)  # the next attempt makes a fresh one
                raise WorkerCrashed(_cause(error)) from None
            except self._cluster.ray.exceptions.RayError:
                # The actor is dying or dead for good: ask again (a new one past its restarts).
                await asyncio.sleep(0.2)
                continue
            if placement["incarnation"] != self._slot.incarnation:
                break
            stale_since = stale_since if stale_since is not None else loop.time()
            if loop.time() - stale_since > _STALE_SECONDS:
                self._kill_actor(restart=True)
                stale_since = None
            await asyncio.sleep(0.1)
        self._slot.incarnation = placement["incarnation"]
        self._placement = placement
        self._drain_task = asyncio.create_task(self._drain())
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._heartbeat())]

    def _actor_for_slot(self) -> Any:
        options = self._cluster.options
        configure = WireCodec().encode(Configure(self._config))
        # The name and options are not secret; the configuration is the argument only.
        return self._cluster.actor_class.options(
            name=self._slot.name, namespace=options.namespace, get_if_exists=True,
            max_restarts=options.max_restarts,
            # Never retried by Ray: a call that ran may have committed. The supervisor, which
            # knows what started, sends the rest to the successor.
            max_task_retries=0,
            num_cpus=options.num_cpus, scheduling_strategy=options.scheduling_strategy,
        ).remote(configure)

    # -- the two channels ----------------------------------------------------------------------
    async def request(self, request: Request,
                      on_start: Callable[[], None] | None = None) -> Reply:
        if self._actor is None or self._exit is not None:
            raise WorkerCrashed(f"worker {self._config.index} is not running")
        call_id, reply = self._calls.open(on_start)
        self._outgoing.append(Call(call_id, request))
        self._have_outgoing.set()
        try:
            return await reply
        finally:
            self._calls.forget(call_id)

    async def _send(self) -> None:
        """Owned by this handle: one batch in flight at a time, in the order of the calls."""
        options = self._cluster.options
        while True:
            await self._have_outgoing.wait()
            if options.batch_window_seconds > 0 and len(self._outgoing) < options.batch_size:
                await asyncio.sleep(options.batch_window_seconds)
            else:
                await asyncio.sleep(0)  # the rest of this loop turn joins the batch
            batch = self._outgoing[:options.batch_size]
            del self._outgoing[:options.batch_size]
            if not self._outgoing:
                self._have_outgoing.clear()
            try:
                await self._actor.submit.remote(self._batches.encode(batch))
            except Exception as error:
                self._finish(self._why_it_died(error))
                return

    async def _drain(self) -> None:
        """Owned by this handle: routes the actor's frames until the actor is gone."""
        outcome = "stopped"
        try:
            while True:
                data, ended = await self._actor.drain.remote()
                for frame in self._batches.decode(data):
                    self._route(frame)
                if ended:
                    if not self._stopping:
                        # Its worker ended without being asked: end the actor too, so the
                        # successor is a fresh one.
                        outcome = "its worker ended by itself"
                        self._kill_actor(restart=True)
                    break
        except asyncio.CancelledError:
            raise
        except Exception as error:
            outcome = self._why_it_died(error)
        self._finish(outcome)

    def _route(self, frame: Frame) -> None:
        match frame:
            case Log(tenant, level, template, message):
                self._log(tenant, level, template, message)
            case Started(call_id):
                self._calls.started(call_id)
            case Answer(call_id, reply):
                self._calls.answered(call_id, reply)
            case Failed(call_id, error):
                self._calls.failed(call_id, error_from_wire(error))
            case Stuck():
                self._stuck = frame

    def _why_it_died(self, error: BaseException) -> str:
        if self._stuck is not None:
            return f"killed by the watchdog ({self._stuck.label})"
        if self._unresponsive:
            return "killed: its event loop stopped answering"
        exceptions = self._cluster.ray.exceptions
        if isinstance(error, exceptions.RayActorError):  # ActorUnavailableError too
            return f"its actor died: {_cause(error)}"  # Ray is restarting it
        # Contact lost, the actor perhaps alive: end it, so the successor starts afresh.
        self._kill_actor(restart=True)
        return f"its actor failed a call: {_cause(error)}"

    async def _heartbeat(self) -> None:
        """Owned by this handle: ends the actor once its loop misses a heartbeat (Ray then
        restarts it)."""
        liveness = self._liveness
        while True:
            await asyncio.sleep(liveness.interval)
            try:
                await asyncio.wait_for(self.request(Ping()), liveness.deadline)
            except TimeoutError:
                _log.error("worker %s did not answer its heartbeat within %.1f s; killing its "
                           "actor", self._config.index, liveness.deadline)
                self._unresponsive = True
                self._kill_actor(restart=True)
                return
            except MoonshardError:
                return

    # -- ending ----------------------------------------------------------------------------------
    def _finish(self, outcome: str) -> None:
        if self._exit is not None:
            return
        self._exit = outcome
        self._calls.crashed(WorkerCrashed(
            f"worker {self._config.index} crashed: {outcome}",
            stuck=self._stuck.label if self._stuck is not None else None))
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._ended.set()

    def _kill_actor(self, *, restart: bool) -> None:
        if self._actor is not None:
            with contextlib.suppress(Exception):  # already gone
                self._cluster.ray.kill(self._actor, no_restart=not restart)

    async def wait_exit(self) -> str:
        await self._ended.wait()
        assert self._exit is not None
        return self._exit

    async def kill(self) -> None:
        # Ray's restart policy builds the successor under the same name.
        self._kill_actor(restart=True)
        await self.wait_exit()

    async def stop(self, deadline: float) -> None:
        self._stopping = True
        for task in self._tasks[1:]:  # the heartbeat: a drain may answer late
            task.cancel()
        with contextlib.suppress(MoonshardError, TimeoutError):
            await asyncio.wait_for(self.request(Stop(deadline)), deadline + 5.0)
        if self._drain_task is not None:
            # Its last frames (answers, log lines) come before the end.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._drain_task), 5.0)
        self._kill_actor(restart=False)
        self._finish("stopped")
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _cause(error: BaseException) -> str:
    """Ray's error in one line (its text can run to a traceback of the actor)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = lines[0].strip() if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
