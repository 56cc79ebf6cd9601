"""The inside of one worker: a router over the actors of the tenants routed to it.

Events of one tenant run one at a time in arrival order (its ``TenantActor``); tenants run
concurrently. Lua steps run on a small pool of threads (lupa releases the GIL while Lua runs),
so a tenant burning its CPU limit does not hold up the others, and a host call that waits on
I/O yields to this worker's event loop. The parts: ``worker.actor`` (a tenant's mailbox, set,
VM and lifecycle), ``worker.vmcache`` (which VMs stay), ``host.runner`` (one handler run, one
transaction), ``timers.delivery`` (firing timers), and this router, which owns them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from moonshard.contracts.timers import TimerRef
from moonshard.contracts.worker import (
    Ack,
    Arm,
    Dispatch,
    Ping,
    Reload,
    ReloadReply,
    Reply,
    Request,
    Status,
    Stop,
    TenantLog,
    TenantStatus,
    Validate,
    ValidateReply,
    WorkerConfig,
    WorkerStatus,
)
from moonshard.discord.capability import DiscordCapability, DiscordHost
from moonshard.discord.config import DiscordConfig
from moonshard.errors import Overloaded, TenantQuarantined, WorkerUnavailable
from moonshard.host.runner import CAPABILITIES, HandlerRunner, RunContext
from moonshard.sandbox.loading import validate_template
from moonshard.store.api import KVRecord, OutboxEvent, RunCommit, Store
from moonshard.tenants import TenantId
from moonshard.timers.delivery import TimerDelivery
from moonshard.timers.service import TimerService
from moonshard.timers.sources import stored_timers
from moonshard.worker.actor import (
    ActorServices,
    Deliver,
    FireTimers,
    Job,
    TenantActor,
    WarmUp,
    no_subscriber,
)
from moonshard.worker.steps import LuaSteps, OnStuck
from moonshard.worker.vmcache import VMCachePolicy

__all__ = ["OnStuck", "WorkerCore"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)
# Outbox rows read per page when a worker starts (they are delivered in that order).
_OUTBOX_PAGE = 1000



class WorkerCore:
    """Owns the tenants routed to one worker. Run it with ``run()``; talk to it with ``handle``."""

    def __init__(self, config: WorkerConfig, store: Store, log: TenantLog,
                 on_stuck: OnStuck | None = None) -> None:
        self.config = config
        self._store = store
        self._log = log
        self._on_stuck = on_stuck
        self._actors: dict[TenantId, TenantActor] = {}
        self._queued = 0
        self._stopping = False
        self._tasks: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._steps = LuaSteps(config.index, config.lua_threads,
                               config.limits.hard_wall_seconds, self._stuck)
        # Tenants abandoned after a stuck call (thread topology), until when.
        self._quarantined: dict[TenantId, float] = {}
        self.quarantine_seconds = config.quarantine_seconds
        self._abandoned = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.cache = VMCachePolicy(config.max_resident_vms, config.idle_seconds)
        self.timers = TimerService(stored_timers(store.timers, config.shard),
                                   self._fire_through_mailbox, config.timers)
        self._delivery = TimerDelivery(store, self.timers, log)
        # Discord (its REST client opens on first use, on this worker's loop).
        self._discord = DiscordHost.from_config(_discord_config(config.discord))
        self._runner = HandlerRunner(store, config.limits, log, on_commit=self._committed,
                                     capabilities={**CAPABILITIES, "discord": self._open_discord},
                                     opened_at_start=frozenset({"discord"}))
        self._services = ActorServices(
            store=store, limits=config.limits, runner=self._runner,
            step_runner=self._step_runner, log=log,
            make_room=lambda: self.cache.make_room(self._actors.values()),
            fire_timers=self._delivery.fire_batch, dequeued=self._dequeued,
            cpu_alarm=self._steps.cpu_alarm)

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Runs until ``Stop`` is handled; every task it starts ends before it returns."""
        self._loop = asyncio.get_running_loop()
        with self._steps:
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    # Before any request: a run committed from now on hands its own emitted
                    # events on, so what is read here is exactly what no one else delivers.
                    await self._deliver_outbox()
                    self._ready.set()
                    tasks.create_task(self._evict_idle_forever())
                    tasks.create_task(self.timers.run())
                    tasks.create_task(self._warm_up())
                    await self._stopped.wait()
                    raise _Stopped
            except* _Stopped:
                pass
            finally:
                self._tasks = None
                # A stuck call of an abandoned tenant would hold the stop until it returns.
                self._steps.shutdown(wait=not self._abandoned)
                await self._discord.close()

    async def handle(self, request: Request, on_start: Callable[[], None] | None = None) -> Reply:
        """Handles one request; ``on_start`` is called when a dispatch begins to run."""
        await self._ready.wait()
        if isinstance(request, Ping):
            return Ack()
        if isinstance(request, Status):
            return self.status() if request.tenant is None else \
                self.tenant_status(request.tenant)
        if isinstance(request, Stop):
            await self._stop(request.deadline)
            return Ack()
        if self._stopping:
            raise WorkerUnavailable(f"worker {self.config.index} is stopping")
        if isinstance(request, Validate):
            return await self._validate(request)
        if isinstance(request, Arm):
            self.timers.arm(request.timer)
            return Ack()
        if isinstance(request, Reload) and request.tenant not in self._actors:
            return ReloadReply(False)  # nothing cached: the next event loads the stored set
        self._check_quarantine(request.tenant)
        actor = self._actor(request.tenant)
        if isinstance(request, Dispatch):
            known = actor.template_set
            if known is not None and request.event.name not in known.subscriptions:
                return no_subscriber(request.event)
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._enqueue(actor, Job(request, reply, on_start))
        return await reply

    async def _validate(self, request: Validate) -> ValidateReply:
        """Raises TemplateError or LimitExceeded; else gives the subscriptions."""
        run_step = self._steps.runner(request.tenant, f"(validating {request.name})")
        template = await validate_template(request.tenant, request.name, request.files,
                                           self.config.limits, run_step)
        return ValidateReply(tuple(template.events))

    def tenant_status(self, tenant: TenantId) -> TenantStatus:
        actor = self._actors.get(tenant)
        vm = actor.vm if actor is not None else None
        return TenantStatus(
            resident=vm is not None,
            memory_bytes=vm.memory_used if vm is not None else None,
            loaded_version=actor.template_set.version
            if actor is not None and actor.template_set is not None else None,
            queued=actor.mailbox.qsize() if actor is not None else 0,
            running=actor.busy if actor is not None else False,
            quarantined=tenant in self._quarantined)

    def status(self) -> WorkerStatus:
        resident = [actor.vm for actor in self._actors.values() if actor.vm is not None]
        return WorkerStatus(
            index=self.config.index, tenants=len(self._actors), resident_vms=len(resident),
            vm_memory_bytes=sum(vm.memory_used for vm in resident), queued=self._queued,
            stopping=self._stopping,
            timers={"held": self.timers.held, **self.timers.stats.to_json()},
            quarantined=sorted(str(tenant) for tenant in self._quarantined))

    # -- mailboxes -------------------------------------------------------------------------
    def _actor(self, tenant: TenantId) -> TenantActor:
        actor = self._actors.get(tenant)
        if actor is None:
            if self._tasks is None:
                raise WorkerUnavailable(f"worker {self.config.index} is not running")
            actor = TenantActor(tenant, self._services, self.config.mailbox_size)
            self._actors[tenant] = actor
            actor.consumer = self._tasks.create_task(actor.consume())
        return actor

    def _enqueue(self, actor: TenantActor, job: Job) -> None:
        if self._queued >= self.config.max_queued:
            raise Overloaded(f"worker {self.config.index} has {self._queued} events queued")
        try:
            actor.mailbox.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(
                f"tenant {actor.tenant} has {actor.mailbox.qsize()} events queued") from None
        self._queued += 1

    def _dequeued(self) -> None:
        self._queued -= 1

    async def _evict_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cache.period)
            self.evict_idle()

    def evict_idle(self) -> int:
        """Discards idle VMs and forgets long-idle tenants; returns how many VMs went."""
        evicted, forget = self.cache.evict_idle(list(self._actors.values()))
        for actor in forget:
            # Nothing is queued and nothing runs (one loop thread): safe to drop it.
            if actor.consumer is not None:
                actor.consumer.cancel()
            del self._actors[actor.tenant]
        return evicted

    # -- after a run's commit: timers and emitted events -----------------------------------
    def _committed(self, tenant: TenantId, commit: RunCommit) -> None:
        if commit.kv_results:
            actor = self._actors.get(tenant)
            if actor is not None:
                actor.kv_commits += 1
        for result in commit.kv_results:
            if isinstance(result, KVRecord) and result.expires_at is not None:
                self.timers.arm(TimerRef("expiry", result.expires_at, tenant, result.scope,
                                         result.key, result.version))
        for event in commit.scheduled:
            self.timers.arm(TimerRef("scheduled", event.due_at, tenant, "", str(event.id),
                                     event.id))
        for emitted in commit.outbox:
            self._deliver(emitted)

    def _deliver(self, emitted: OutboxEvent) -> None:
        try:
            self._enqueue(self._actor(emitted.tenant), Job(Deliver(emitted), None))
        except (Overloaded, WorkerUnavailable) as error:
            # It stays in the outbox: the next start of this worker delivers it.
            self._log(emitted.tenant, "warn", "-",
                      f"emitted event {emitted.name} delayed until the worker restarts: {error}")

    async def _deliver_outbox(self) -> None:
        """At start: hands on the emitted events a previous incarnation committed but did
        not deliver (it died between the two)."""
        after = 0
        while True:
            page = await self._store.runs.outbox(self.config.shard, limit=_OUTBOX_PAGE,
                                                 after=after)
            for emitted in page:
                self._deliver(emitted)
            if len(page) < _OUTBOX_PAGE:
                return
            after = page[-1].id

    # -- timers ----------------------------------------------------------------------------
    async def _fire_through_mailbox(self, timers: Sequence[TimerRef]) -> None:
        """Fires timers of one tenant in its mailbox, so in order with its other events;
        waits for them."""
        tenant = timers[0].tenant
        if self._stopping:
            raise WorkerUnavailable("stopping: the timer fires after the restart")
        if tenant in self._quarantined:
            raise WorkerUnavailable("the tenant is quarantined: the timer fires after")
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(self._actor(tenant), Job(FireTimers(tuple(timers)), done))
        await done

    async def _warm_up(self) -> None:
        """Builds the VMs of tenants with resume keys at start, a few at a time."""
        tenants = await self._store.timers.tenants_with_resume_keys(self.config.shard,
                                                                    now=time.time())
        slots = asyncio.Semaphore(self.config.warm_up_concurrency)

        async def warm(tenant: TenantId) -> None:
            async with slots:
                done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._enqueue(self._actor(tenant), Job(WarmUp(), done))
                try:
                    await done
                except Exception as error:
                    _log.warning("warming %s up failed: %s", tenant, error)

        async with asyncio.TaskGroup() as warming:
            for tenant in tenants:
                warming.create_task(warm(tenant))

    # -- Lua steps, and stuck ones ---------------------------------------------------------
    def _step_runner(self, actor: TenantActor, what: str) -> Callable[[Callable[[], _T]], Any]:
        return self._steps.runner(actor.tenant, what, lambda: actor.vm)

    def _open_discord(self, run: RunContext) -> DiscordCapability:
        """ctx.discord for one handler run; its buckets are the tenant's, outside the VM."""
        log = self._log

        def tenant_log(level: str, template: str, message: str) -> None:
            log(run.tenant, level, template, message)

        return self._discord.open_run(run.tenant, run.event, run.rate_limiter, tenant_log,
                                      run.template.name)

    def _stuck(self, seconds: float, tenant: TenantId | None, label: str) -> None:
        """On the watchdog's thread: the owner ends the process (``on_stuck``); where it
        cannot (a thread), the tenant is abandoned."""
        _log.error("worker %s: %s stuck in one Lua call for %.1f s", self.config.index, label,
                   seconds)
        if self._on_stuck is not None:
            self._on_stuck(seconds, tenant, label)
        elif tenant is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.abandon, tenant)

    def abandon(self, tenant: TenantId) -> None:
        """Gives up on a tenant whose Lua call is stuck where it cannot be stopped (a thread):
        its waiting callers fail now, its VM is left to the stuck call, and the tenant is
        refused for ``quarantine_seconds``; the worker's other tenants carry on. On the
        worker's loop."""
        actor = self._actors.pop(tenant, None)
        self._quarantined[tenant] = time.time() + self.quarantine_seconds
        asyncio.get_running_loop().call_later(self.quarantine_seconds,
                                              self._quarantined.pop, tenant, None)
        self._log(tenant, "error", "-", "a Lua call was stuck past the hard limit: the tenant "
                  f"is quarantined for {self.quarantine_seconds:.0f} s and its VM abandoned")
        if actor is None:
            return
        self._abandoned += 1
        error = TenantQuarantined(f"tenant {tenant} was stuck in one Lua call past the hard "
                                  "limit and is quarantined", until=self._quarantined[tenant])
        # Its consumer stays inside the stuck call until that returns (the Lua state must not
        # be touched meanwhile), then ends; nothing it gives is reported.
        running, queued = actor.abandon()
        self._queued -= len(queued)
        for job in [*([running] if running is not None else []), *queued]:
            if job.reply is not None and not job.reply.done():
                job.reply.set_exception(error)

    def _check_quarantine(self, tenant: TenantId) -> None:
        until = self._quarantined.get(tenant)
        if until is not None:
            raise TenantQuarantined(
                f"tenant {tenant} is quarantined for {max(0.0, until - time.time()):.0f} more "
                "seconds: a Lua call of it was stuck past the hard limit", until=until)

    # -- stopping --------------------------------------------------------------------------
    async def _stop(self, deadline: float) -> None:
        """Stops taking work, lets queued and running events finish within ``deadline``."""
        self._stopping = True
        drained = asyncio.gather(*(actor.mailbox.join() for actor in list(self._actors.values())))
        try:
            await asyncio.wait_for(drained, deadline)
        except TimeoutError:
            _log.warning("worker %s: stopped with events still queued", self.config.index)
        self._stopped.set()


class _Stopped(Exception):
    """Ends the worker's task group once it has drained."""


def _discord_config(wire: object) -> DiscordConfig | None:
    """The worker config's Discord settings: as given (a thread worker) or as they crossed
    the process wire (a mapping)."""
    if wire is None or isinstance(wire, DiscordConfig):
        return wire
    if isinstance(wire, dict):
        return DiscordConfig.from_wire(wire)
    raise TypeError(f"unexpected Discord settings: {type(wire).__name__}")
