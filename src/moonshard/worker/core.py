"""The inside of one worker: the VMs of its tenants, one ordered mailbox per tenant.

Events of one tenant run one at a time in arrival order; tenants run concurrently. Lua steps
run on a small pool of threads (lupa releases the GIL while Lua runs), so a tenant burning
its CPU limit does not hold up the others, and a host call that waits on I/O yields to this
worker's event loop. Each tenant's VM is touched only by its own mailbox consumer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

# issue 11 (Discord): the worker's DiscordHost, its config field and the ctx.discord capability.
from moonshard.discord.capability import DiscordHost
from moonshard.discord.config import DiscordConfig
from moonshard.errors import Overloaded, WorkerUnavailable
from moonshard.events import Event, HandlerResult
from moonshard.host.api import Capability
from moonshard.host.dispatch import dispatch_event
from moonshard.host.events import EventsCapability, Scheduled
from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.limits import Limits
from moonshard.sandbox.loading import build_vm, validate_template
from moonshard.sandbox.vm import TenantVM
from moonshard.sandbox.watchdog import StepWatchdog
from moonshard.store.api import KVRecord, Shard, Store, TimerRef
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId
from moonshard.timers.service import TimerConfig, TimerService
from moonshard.timers.wheel import Cursor
from moonshard.worker.messages import Arm, Dispatch, Reload, Request, Status, Stop, Validate

__all__ = ["BuildReason", "DispatchReply", "TenantLog", "WorkerConfig", "WorkerCore"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)

TenantLog = Callable[[TenantId, str, str, str], None]
"""Receives (tenant, level, template, message) for each line of a tenant's log."""


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs to start; a worker process is given only this."""

    index: int
    database_url: str
    limits: Limits = dataclasses.field(default_factory=Limits)
    lua_threads: int = 4
    idle_seconds: float = 300.0
    max_resident_vms: int = 2000
    mailbox_size: int = 1000
    max_queued: int = 20_000
    # Process workers end themselves when a Lua call is stuck past the hard limit.
    kill_when_stuck: bool = False
    # How many workers the pool has: this worker fires the timers of its share of tenants.
    workers: int = 1
    timers: TimerConfig = dataclasses.field(default_factory=TimerConfig)
    # Tenants with resume keys whose VMs are built at once when the worker starts.
    warm_up_concurrency: int = 8
    # issue 11: how this worker reaches Discord. It holds the bot token, a secret: a worker
    # process must get its config over a pipe, not on its command line.
    discord: DiscordConfig | None = None

    @property
    def shard(self) -> Shard:
        return (self.index, self.workers)

    def to_wire(self) -> dict[str, Any]:
        wire = dataclasses.asdict(dataclasses.replace(self, discord=None))
        wire["discord"] = self.discord.to_wire() if self.discord is not None else None
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> WorkerConfig:
        fields = dict(wire)
        fields["limits"] = Limits(**fields["limits"])
        timers = dict(fields["timers"])
        timers["backoff"] = tuple(timers["backoff"])
        fields["timers"] = TimerConfig(**timers)
        discord = fields.get("discord")
        fields["discord"] = DiscordConfig.from_wire(discord) if discord is not None else None
        return cls(**fields)


class BuildReason(enum.Enum):
    """Why a tenant's VM is being built; templates see it as ``Startup``'s reason."""

    WORKER_START = "worker_start"
    TEMPLATES_CHANGED = "templates_changed"
    VM_REBUILT = "vm_rebuilt"


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchReply:
    results: list[HandlerResult]
    dropped: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _FireTimer:
    timer: TimerRef


@dataclasses.dataclass(frozen=True, slots=True)
class _WarmUp:
    """Build the tenant's VM now (Startup and KeyResume run), without waiting for traffic."""


_Work = Dispatch | Reload | _FireTimer | _WarmUp


@dataclasses.dataclass(slots=True)
class _Job:
    request: _Work
    reply: asyncio.Future[Any] | None
    on_start: Callable[[], None] | None


class _TenantSlot:
    """A tenant's mailbox, template set and VM within one worker."""

    __slots__ = (
        "build_reason",
        "busy",
        "consumer",
        "last_used",
        "mailbox",
        "rate_limiter",
        "template_set",
        "tenant",
        "vm",
    )

    def __init__(self, tenant: TenantId, mailbox_size: int) -> None:
        self.tenant = tenant
        self.mailbox: asyncio.Queue[_Job] = asyncio.Queue(mailbox_size)
        self.template_set: TemplateSet | None = None
        self.vm: TenantVM | None = None
        self.build_reason = BuildReason.WORKER_START
        self.last_used = time.monotonic()
        self.busy = False
        self.consumer: asyncio.Task[None] | None = None
        # Outlives VM rebuilds, so breaking a limit does not reset the tenant's rate.
        self.rate_limiter = GcraLimiter()


class WorkerCore:
    """Owns the tenants routed to one worker. Run it with ``run()``; talk to it with ``handle``."""

    def __init__(self, config: WorkerConfig, store: Store, log: TenantLog,
                 on_stuck: Callable[[float, str], None] | None = None) -> None:
        self.config = config
        self._store = store
        self._log = log
        self._on_stuck = on_stuck
        self._slots: dict[TenantId, _TenantSlot] = {}
        self._queued = 0
        self._stopping = False
        self._tasks: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            config.lua_threads, thread_name_prefix=f"moonshard-lua-{config.index}")
        self._watchdog = StepWatchdog(config.limits.hard_wall_seconds, self._stuck)
        # issue 11: Discord (its REST client opens on first use, on this worker's loop).
        self._discord = DiscordHost.from_config(config.discord)
        self.timers = TimerService(
            {"expiry": self._page_source("expiry"), "scheduled": self._page_source("scheduled")},
            self._fire_through_mailbox, config.timers)

    def _page_source(self, kind: str) -> Callable[[Cursor, float, int], Any]:
        """Reads this worker's share of the stored timers of ``kind``, a page at a time."""
        timers, shard = self._store.timers, self.config.shard

        async def expiries(after: Cursor, end: float, limit: int) -> list[TimerRef]:
            rows = await timers.expiries_after(after, end, limit, shard=shard)
            return [TimerRef("expiry", record.expires_at or 0.0, tenant, record.scope,
                             record.key, record.version) for tenant, record in rows]

        async def scheduled(after: Cursor, end: float, limit: int) -> list[TimerRef]:
            last_id = int(after[4]) if after[4] else 0
            events = await timers.scheduled_after((after[0], last_id), end, limit, shard=shard)
            return [TimerRef("scheduled", event.due_at, event.tenant, "", str(event.id),
                             event.id) for event in events]

        return expiries if kind == "expiry" else scheduled

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Runs until ``Stop`` is handled; every task it starts ends before it returns."""
        with self._watchdog:
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
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
                self._executor.shutdown(wait=True, cancel_futures=True)
                await self._discord.close()  # issue 11

    async def handle(self, request: Request, on_start: Callable[[], None] | None = None) -> Any:
        """Handles one request; ``on_start`` is called when a dispatch begins to run."""
        await self._ready.wait()
        if isinstance(request, Status):
            return self.status() if request.tenant is None else \
                self.tenant_status(request.tenant)
        if isinstance(request, Stop):
            await self._stop(request.deadline)
            return {"stopped": True}
        if self._stopping:
            raise WorkerUnavailable(f"worker {self.config.index} is stopping")
        if isinstance(request, Validate):
            return await self._validate(request)
        if isinstance(request, Arm):
            self.timers.arm(request.timer)
            return {"armed": True}
        if isinstance(request, Reload) and request.tenant not in self._slots:
            return {"reloaded": False}  # nothing cached: the next event loads the stored set
        slot = self._slot(request.tenant)
        if isinstance(request, Dispatch):
            known = slot.template_set
            if known is not None and request.event.name not in known.subscriptions:
                return _no_subscriber(request.event)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._enqueue(slot, _Job(request, reply, on_start))
        return await reply

    async def _validate(self, request: Validate) -> dict[str, Any]:
        """Raises TemplateError or LimitExceeded; else gives the subscriptions."""
        loop = asyncio.get_running_loop()
        label = f"{request.tenant} (validating {request.name})"

        async def run_step(step: Callable[[], _T]) -> _T:
            return await loop.run_in_executor(self._executor, self._watchdog.watch, step, label)

        template = await validate_template(request.tenant, request.name, request.files,
                                           self.config.limits, run_step)
        return {"events": list(template.events)}

    def tenant_status(self, tenant: TenantId) -> dict[str, Any]:
        slot = self._slots.get(tenant)
        vm = slot.vm if slot is not None else None
        return {
            "resident": vm is not None,
            "memory_bytes": vm.memory_used if vm is not None else None,
            "loaded_version": slot.template_set.version
            if slot is not None and slot.template_set is not None else None,
            "queued": slot.mailbox.qsize() if slot is not None else 0,
            "running": slot.busy if slot is not None else False,
        }

    def status(self) -> dict[str, Any]:
        resident = [slot.vm for slot in self._slots.values() if slot.vm is not None]
        return {
            "index": self.config.index,
            "tenants": len(self._slots),
            "resident_vms": len(resident),
            "vm_memory_bytes": sum(vm.memory_used for vm in resident),
            "queued": self._queued,
            "stopping": self._stopping,
            "timers": {"held": self.timers.held, **self.timers.stats.to_json()},
        }

    # -- mailboxes -------------------------------------------------------------------------
    def _slot(self, tenant: TenantId) -> _TenantSlot:
        slot = self._slots.get(tenant)
        if slot is None:
            if self._tasks is None:
                raise WorkerUnavailable(f"worker {self.config.index} is not running")
            slot = _TenantSlot(tenant, self.config.mailbox_size)
            self._slots[tenant] = slot
            slot.consumer = self._tasks.create_task(self._consume(slot))
        return slot

    def _enqueue(self, slot: _TenantSlot, job: _Job) -> None:
        if self._queued >= self.config.max_queued:
            raise Overloaded(f"worker {self.config.index} has {self._queued} events queued")
        try:
            slot.mailbox.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(
                f"tenant {slot.tenant} has {slot.mailbox.qsize()} events queued") from None
        self._queued += 1

    async def _consume(self, slot: _TenantSlot) -> None:
        """The only code that touches this tenant's VM: one job at a time, in order."""
        while True:
            job = await slot.mailbox.get()
            self._queued -= 1
            slot.busy = True
            try:
                if job.on_start is not None:
                    job.on_start()
                result = await self._execute(slot, job.request)
            except asyncio.CancelledError:
                if job.reply is not None and not job.reply.done():
                    job.reply.set_exception(WorkerUnavailable("the worker stopped"))
                raise
            except Exception as error:
                _log.exception("worker %s: %s failed", self.config.index, job.request)
                if job.reply is not None and not job.reply.done():
                    job.reply.set_exception(error)
            else:
                if job.reply is not None and not job.reply.done():
                    job.reply.set_result(result)
            finally:
                slot.busy = False
                slot.last_used = time.monotonic()
                slot.mailbox.task_done()

    async def _execute(self, slot: _TenantSlot, request: _Work) -> Any:
        if isinstance(request, Reload):
            return await self._reload(slot)
        if isinstance(request, _FireTimer):
            return await self._fire(slot, request.timer)
        if isinstance(request, _WarmUp):
            template_set = await self._template_set(slot)
            await self._vm(slot, template_set)
            return None
        template_set = await self._template_set(slot)
        if request.event.name not in template_set.subscriptions:
            return _no_subscriber(request.event)
        vm = await self._vm(slot, template_set)
        results = await self._run_event(slot, vm, template_set, request.event)
        return DispatchReply(results)

    # -- templates and VMs -----------------------------------------------------------------
    async def _template_set(self, slot: _TenantSlot) -> TemplateSet:
        if slot.template_set is None:
            slot.template_set = await self._store.templates.load_set(slot.tenant)
        return slot.template_set

    async def _reload(self, slot: _TenantSlot) -> dict[str, Any]:
        """Builds the stored set's VM aside, then swaps set and VM in one step."""
        template_set = await self._store.templates.load_set(slot.tenant)
        had_vm = slot.vm is not None
        vm = await self._build(slot, template_set) if had_vm else None
        slot.template_set, slot.vm = template_set, vm
        slot.build_reason = BuildReason.TEMPLATES_CHANGED
        if vm is not None:
            await self._after_build(slot, vm, template_set, BuildReason.TEMPLATES_CHANGED)
        return {"reloaded": True, "version": template_set.version}

    async def _vm(self, slot: _TenantSlot, template_set: TemplateSet) -> TenantVM:
        if slot.vm is not None and slot.vm.broken is None:
            return slot.vm
        reason = slot.build_reason
        self._make_room()
        slot.vm = await self._build(slot, template_set)
        await self._after_build(slot, slot.vm, template_set, reason)
        return slot.vm

    async def _build(self, slot: _TenantSlot, template_set: TemplateSet) -> TenantVM:
        return await build_vm(template_set, self.config.limits, self._tenant_log(slot.tenant),
                              self._step_runner(slot, "(load)"))

    async def _after_build(self, slot: _TenantSlot, vm: TenantVM, template_set: TemplateSet,
                           reason: BuildReason) -> None:
        """Before any other event of a fresh VM: ``Startup``, then one ``KeyResume`` per key."""
        slot.build_reason = BuildReason.VM_REBUILT
        if "Startup" in template_set.subscriptions:
            await self._run_event(slot, vm, template_set,
                                  Event("Startup", {"reason": reason.value}))
        if "KeyResume" not in template_set.subscriptions:
            return
        for record in await self._store.timers.resume_records(slot.tenant, now=time.time()):
            if vm.broken is not None:
                break
            await self._run_event(slot, vm, template_set, Event(
                "KeyResume", {"key": record.key, "scope": record.scope, "value": record.value}))

    def _make_room(self) -> None:
        """Evicts the least recently used idle VMs past the cap on resident VMs."""
        resident = [slot for slot in self._slots.values() if slot.vm is not None]
        excess = len(resident) - self.config.max_resident_vms + 1
        if excess <= 0:
            return
        idle = sorted((slot for slot in resident if not slot.busy and slot.mailbox.empty()),
                      key=lambda slot: slot.last_used)
        for slot in idle[:excess]:
            slot.vm = None
            slot.build_reason = BuildReason.VM_REBUILT

    async def _evict_idle_forever(self) -> None:
        period = max(0.05, min(self.config.idle_seconds / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            self.evict_idle()

    def evict_idle(self) -> int:
        """Discards VMs unused for ``idle_seconds``, and forgets tenants unused for twice
        that (their mailbox and cached template set); returns how many VMs went."""
        now = time.monotonic()
        evicted = 0
        for slot in list(self._slots.values()):
            if slot.busy or not slot.mailbox.empty():
                continue
            idle = now - slot.last_used
            if slot.vm is not None and idle > self.config.idle_seconds:
                slot.vm = None
                slot.build_reason = BuildReason.VM_REBUILT
                evicted += 1
            elif slot.vm is None and idle > 2 * self.config.idle_seconds and \
                    slot.consumer is not None:
                # Nothing is queued and nothing runs (one loop thread): safe to drop it.
                slot.consumer.cancel()
                del self._slots[slot.tenant]
        return evicted

    # -- timers ----------------------------------------------------------------------------
    def _arm_expiries(self, tenant: TenantId) -> Callable[[list[KVRecord]], None]:
        def arm(records: list[KVRecord]) -> None:
            for record in records:
                if record.expires_at is not None:
                    self.timers.arm(TimerRef("expiry", record.expires_at, tenant, record.scope,
                                             record.key, record.version))
        return arm

    async def _fire_through_mailbox(self, timer: TimerRef) -> None:
        """Fires in the tenant's mailbox, so in order with its other events; waits for it."""
        if self._stopping:
            raise WorkerUnavailable("stopping: the timer fires after the restart")
        slot = self._slot(timer.tenant)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(slot, _Job(_FireTimer(timer), done, None))
        await done

    async def _fire(self, slot: _TenantSlot, timer: TimerRef) -> None:
        retried = False
        try:
            if timer.kind == "expiry":
                retried = await self._fire_expiry(slot, timer)
            else:
                retried = await self._fire_scheduled(slot, timer)
        finally:
            if not retried:
                self.timers.done(timer)

    async def _fire_expiry(self, slot: _TenantSlot, timer: TimerRef) -> bool:
        """Delivers ``KeyExpiry``; True when a retry was scheduled."""
        tenant, store = slot.tenant, self._store
        record, _ = await store.kv.load_row(tenant, timer.scope, timer.key)
        if record is None or record.version != timer.version or record.expires_at is None \
                or record.expires_at > time.time():
            return False  # deleted, changed or moved since it was read: not this timer's
        template_set = await self._template_set(slot)
        if "KeyExpiry" not in template_set.subscriptions:
            await store.timers.delete_if_version(tenant, timer.scope, timer.key, timer.version,
                                                expires_at=record.expires_at)
            return False
        event = Event("KeyExpiry", {
            "key": record.key, "scope": record.scope, "value": record.value,
            "expires_at": record.expires_at, "attempt": timer.attempt,
        }, id=_stable_id("expiry", tenant, timer.scope, timer.key, timer.version))
        vm = await self._vm(slot, template_set)
        results = await self._run_event(slot, vm, template_set, event)
        if all(result.ok for result in results):
            await store.timers.delete_if_version(tenant, timer.scope, timer.key, timer.version,
                                                expires_at=record.expires_at)
            return False
        delay = self.timers.backoff(timer.attempt)
        if delay is None:
            await store.timers.delete_if_version(tenant, timer.scope, timer.key, timer.version,
                                                expires_at=record.expires_at)
            self._dead_letter(tenant, f"KeyExpiry of {timer.scope}/{timer.key}", timer.attempt,
                              results)
            return False
        self.timers.retry(dataclasses.replace(timer, due=time.time() + delay,
                                              attempt=timer.attempt + 1))
        return True

    async def _fire_scheduled(self, slot: _TenantSlot, timer: TimerRef) -> bool:
        """Delivers a scheduled event; True when a retry was scheduled."""
        tenant, timers = slot.tenant, self._store.timers
        scheduled = await timers.get_scheduled(timer.version)
        if scheduled is None or scheduled.due_at > time.time():
            return False  # cancelled, replaced or moved
        template_set = await self._template_set(slot)
        if scheduled.name not in template_set.subscriptions:
            await timers.remove_scheduled(scheduled.id)
            return False
        attempt = scheduled.attempt + 1
        event = Event(scheduled.name, scheduled.data,
                      id=_stable_id("scheduled", tenant, "", str(scheduled.id), scheduled.id))
        vm = await self._vm(slot, template_set)
        results = await self._run_event(slot, vm, template_set, event)
        if all(result.ok for result in results):
            await timers.remove_scheduled(scheduled.id)
            return False
        delay = self.timers.backoff(attempt)
        if delay is None:
            await timers.remove_scheduled(scheduled.id)
            self._dead_letter(tenant, f"scheduled event {scheduled.name}", attempt, results)
            return False
        due = time.time() + delay
        if not await timers.retry_scheduled(scheduled.id, due):
            return False
        self.timers.retry(dataclasses.replace(timer, due=due, attempt=attempt + 1))
        return True

    def _dead_letter(self, tenant: TenantId, what: str, attempts: int,
                     results: list[HandlerResult]) -> None:
        errors = "; ".join(f"{result.template}: {result.error}" for result in results
                           if not result.ok)
        self._log(tenant, "error", "-",
                  f"dead letter: {what} failed {attempts} times and was dropped ({errors})")

    async def _warm_up(self) -> None:
        """Builds the VMs of tenants with resume keys at start, a few at a time."""
        tenants = await self._store.timers.tenants_with_resume_keys(self.config.shard,
                                                                    now=time.time())
        slots = asyncio.Semaphore(self.config.warm_up_concurrency)

        async def warm(tenant: TenantId) -> None:
            async with slots:
                done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._enqueue(self._slot(tenant), _Job(_WarmUp(), done, None))
                try:
                    await done
                except Exception as error:
                    _log.warning("warming %s up failed: %s", tenant, error)

        async with asyncio.TaskGroup() as warming:
            for tenant in tenants:
                warming.create_task(warm(tenant))

    # -- running events --------------------------------------------------------------------
    async def _run_event(self, slot: _TenantSlot, vm: TenantVM, template_set: TemplateSet,
                         event: Event) -> list[HandlerResult]:
        tenant = slot.tenant
        limits = self.config.limits

        def deliver(events: list[Event]) -> None:
            for emitted in events:
                try:
                    self._enqueue(slot, _Job(Dispatch(tenant, emitted), None, None))
                except Overloaded as error:
                    self._log(tenant, "error", "-", f"emitted event {emitted.name} lost: {error}")

        def scheduled(event: Scheduled) -> None:
            self.timers.arm(TimerRef("scheduled", event.due_at, tenant, "", str(event.id),
                                     event.id))

        def open_capabilities(template: Template, running: Event) -> Mapping[str, Capability]:
            return {
                "kv": KVSession(self._store.kv, tenant, limits, slot.rate_limiter,
                                on_commit=self._arm_expiries(tenant)),
                "events": EventsCapability(tenant, limits, self._store.timers, deliver,
                                           author=running.author, on_scheduled=scheduled),
                # issue 11: ctx.discord; its buckets live in the slot, outside the VM.
                "discord": self._discord.open_run(tenant, running, slot.rate_limiter,
                                                  self._tenant_log(tenant), template.name),
            }

        results = await dispatch_event(vm, template_set, event, open_capabilities,
                                       self._step_runner(slot, event.name),
                                       self._tenant_log(tenant))
        if vm.broken is not None and slot.vm is vm:
            slot.vm = None
            self._log(tenant, "warn", "-", f"VM discarded after breaking its {vm.broken} limit; "
                      "it is rebuilt on the next event")
        return results

    def _step_runner(self, slot: _TenantSlot, label: str) -> Callable[[Callable[[], _T]], Any]:
        loop = asyncio.get_running_loop()
        hard_limit = self.config.limits.hard_wall_seconds
        tag = f"{slot.tenant} {label}"

        async def run_step(step: Callable[[], _T]) -> _T:
            started = time.monotonic()
            result = await loop.run_in_executor(self._executor, self._watchdog.watch, step, tag)
            if time.monotonic() - started > hard_limit and slot.vm is not None:
                # Only reached where the process could not be ended (the thread topology).
                slot.vm.broken = "wall"
            return result

        return run_step

    def _tenant_log(self, tenant: TenantId) -> Callable[[str, str, str], None]:
        def log(level: str, template: str, message: str) -> None:
            self._log(tenant, level, template, message)
        return log

    def _stuck(self, seconds: float, label: str) -> None:
        _log.error("worker %s: %s stuck in one Lua call for %.1f s", self.config.index, label,
                   seconds)
        if self._on_stuck is not None:
            self._on_stuck(seconds, label)

    # -- stopping --------------------------------------------------------------------------
    async def _stop(self, deadline: float) -> None:
        """Stops taking work, lets queued and running events finish within ``deadline``."""
        self._stopping = True
        drained = asyncio.gather(*(slot.mailbox.join() for slot in list(self._slots.values())))
        try:
            await asyncio.wait_for(drained, deadline)
        except TimeoutError:
            _log.warning("worker %s: stopped with events still queued", self.config.index)
        self._stopped.set()


class _Stopped(Exception):
    """Ends the worker's task group once it has drained."""


def _stable_id(kind: str, tenant: TenantId, scope: str, key: str, version: int) -> str:
    """The same id for every delivery of one timer, so a handler can de-duplicate."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"moonshard:{kind}:{tenant}:{scope}:{key}:{version}").hex


def _no_subscriber(event: Event) -> DispatchReply:
    return DispatchReply([], dropped=f"no template of the tenant subscribes to {event.name}")
