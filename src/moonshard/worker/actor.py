"""A tenant within one worker: its ordered mailbox, its template set and VM, and their lifecycle.

The actor's consumer is the only code that touches the tenant's VM: one job at a time, in
arrival order. A VM is built when a job needs one (``Startup`` first, then one ``KeyResume``
per resume key, before anything else runs in it), and discarded when it breaks a limit, is
evicted, or the template set changes (``BuildReason`` says which to ``Startup``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from moonshard.contracts.timers import TimerRef
from moonshard.contracts.worker import Dispatch, DispatchReply, Reload, ReloadReply
from moonshard.errors import WorkerUnavailable
from moonshard.events import Event, HandlerResult
from moonshard.host.ratelimit import GcraLimiter
from moonshard.host.runner import HandlerRunner
from moonshard.limits import Limits
from moonshard.sandbox.cpualarm import CpuAlarm
from moonshard.sandbox.loading import build_vm
from moonshard.sandbox.vm import TenantVM
from moonshard.store.api import OutboxEvent, Store
from moonshard.templates import TemplateSet
from moonshard.tenants import TenantId

__all__ = ["ActorServices", "BuildReason", "Deliver", "FireTimers", "Job", "TenantActor",
           "WarmUp", "no_subscriber"]

_log = logging.getLogger(__name__)
# Step runners an actor keeps (one per event name it ran).
_RUNNERS_KEPT = 64


class BuildReason(enum.Enum):
    """Why a tenant's VM is being built; templates see it as ``Startup``'s reason."""

    WORKER_START = "worker_start"
    TEMPLATES_CHANGED = "templates_changed"
    VM_REBUILT = "vm_rebuilt"


@dataclasses.dataclass(frozen=True, slots=True)
class FireTimers:
    """Due timers of this tenant, fired in order (one job for a batch of a backlog)."""

    timers: tuple[TimerRef, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class WarmUp:
    """Build the tenant's VM now (Startup and KeyResume run), without waiting for traffic."""


@dataclasses.dataclass(frozen=True, slots=True)
class Deliver:
    """Run an emitted event from the outbox, then remove it from there."""

    emitted: OutboxEvent


Work = Dispatch | Reload | FireTimers | WarmUp | Deliver


@dataclasses.dataclass(slots=True)
class Job:
    work: Work
    reply: asyncio.Future[Any] | None
    on_start: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ActorServices:
    """What a worker lends its actors."""

    store: Store
    limits: Limits
    runner: HandlerRunner
    step_runner: Callable[[TenantActor, str], Any]
    log: Callable[[TenantId, str, str, str], None]
    # Called before a VM is built: the cache policy makes room.
    make_room: Callable[[], None]
    fire_timers: Callable[[TenantActor, Sequence[TimerRef]], Awaitable[None]]
    # Counts jobs across the worker's mailboxes.
    dequeued: Callable[[], None]
    # The CPU alarm of the Lua threads the steps run on (None: hooks set from the start).
    cpu_alarm: CpuAlarm | None = None


class TenantActor:
    """A tenant's mailbox, template set and VM within one worker."""

    __slots__ = ("_runners", "_services", "abandoned", "build_reason", "busy", "consumer",
                 "current", "kv_commits", "last_used", "mailbox", "rate_limiter",
                 "template_set", "tenant", "vm")

    def __init__(self, tenant: TenantId, services: ActorServices, mailbox_size: int) -> None:
        self.tenant = tenant
        self._services = services
        self.mailbox: asyncio.Queue[Job] = asyncio.Queue(mailbox_size)
        self.template_set: TemplateSet | None = None
        self.vm: TenantVM | None = None
        self.build_reason = BuildReason.WORKER_START
        self.last_used = time.monotonic()
        self.busy = False
        self.consumer: asyncio.Task[None] | None = None
        # Outlives VM rebuilds, so breaking a limit does not reset the tenant's rate.
        self.rate_limiter = GcraLimiter()
        self.current: Job | None = None
        self.abandoned = False
        # Runs of this tenant that committed key-value writes (a timer batch's staleness check).
        self.kv_commits = 0
        # A step runner per event name, made once (a dispatch would otherwise make one).
        self._runners: dict[str, Any] = {}

    @property
    def idle(self) -> bool:
        return not self.busy and self.mailbox.empty()

    def discard_vm(self) -> None:
        self.vm = None
        self.build_reason = BuildReason.VM_REBUILT

    def abandon(self) -> tuple[Job | None, list[Job]]:
        """Gives up on this actor (its running job is stuck): gives the running job and the
        queued ones, for the owner to fail. The consumer ends after its running job."""
        self.abandoned = True
        self.vm = None
        queued: list[Job] = []
        while not self.mailbox.empty():
            queued.append(self.mailbox.get_nowait())
            self.mailbox.task_done()
        return self.current, queued

    # -- the consumer ----------------------------------------------------------------------
    async def consume(self) -> None:
        """The only code that touches this tenant's VM: one job at a time, in order."""
        while not self.abandoned:
            job = await self.mailbox.get()
            self._services.dequeued()
            self.busy = True
            self.current = job
            try:
                if job.on_start is not None:
                    job.on_start()
                result = await self._execute(job.work)
            except asyncio.CancelledError:
                if job.reply is not None and not job.reply.done():
                    job.reply.set_exception(WorkerUnavailable("the worker stopped"))
                raise
            except Exception as error:
                if not self.abandoned:
                    _log.exception("tenant %s: %s failed", self.tenant, type(job.work).__name__)
                if job.reply is not None and not job.reply.done():
                    job.reply.set_exception(error)
            else:
                if job.reply is not None and not job.reply.done():
                    job.reply.set_result(result)
            finally:
                self.busy = False
                self.current = None
                self.last_used = time.monotonic()
                if not self.abandoned:
                    self.mailbox.task_done()

    async def _execute(self, work: Work) -> Any:
        if isinstance(work, Dispatch):
            template_set = await self.templates()
            if work.event.name not in template_set.subscriptions:
                return no_subscriber(work.event)
            return DispatchReply(await self.run(work.event))
        if isinstance(work, Reload):
            return await self.reload()
        if isinstance(work, FireTimers):
            await self._services.fire_timers(self, work.timers)
            return None
        if isinstance(work, Deliver):
            return await self._deliver(work.emitted)
        await self._ensure_vm(await self.templates())
        return None

    # -- what timers and emitted events run through (timers.delivery.EventTarget) ----------
    async def subscriptions(self) -> frozenset[str]:
        return (await self.templates()).subscriptions

    async def run(self, event: Event) -> list[HandlerResult]:
        """Runs ``event`` through the subscribing templates (building the VM if needed)."""
        template_set = await self.templates()
        vm = await self._ensure_vm(template_set)
        return await self._run_in(vm, template_set, event)

    async def run_several(self, events: Sequence[Event]) -> list[list[HandlerResult]]:
        """Runs the first of ``events`` and maybe some after it, in order (see
        ``HandlerRunner.run_events``); gives the results of those it ran."""
        template_set = await self.templates()
        vm = await self._ensure_vm(template_set)
        results = await self._services.runner.run_events(
            vm, template_set, events, self.rate_limiter, self._step_runner(events[0].name))
        self._after_run(vm)
        return results

    async def _deliver(self, emitted: OutboxEvent) -> None:
        event = Event(emitted.name, emitted.data, author=emitted.author, id=emitted.event_id)
        if event.name in await self.subscriptions():
            await self.run(event)
        # Delivered (its handlers ran, whatever they gave): at least once, with one event.id.
        await self._services.store.runs.delivered(emitted.id)

    # -- templates and the VM --------------------------------------------------------------
    async def templates(self) -> TemplateSet:
        if self.template_set is None:
            self.template_set = await self._services.store.templates.load_set(self.tenant)
        return self.template_set

    async def reload(self) -> ReloadReply:
        """Builds the stored set's VM aside, then swaps set and VM in one step."""
        template_set = await self._services.store.templates.load_set(self.tenant)
        had_vm = self.vm is not None
        vm = await self._build(template_set) if had_vm else None
        self.template_set, self.vm = template_set, vm
        self.build_reason = BuildReason.TEMPLATES_CHANGED
        if vm is not None:
            await self._after_build(vm, template_set, BuildReason.TEMPLATES_CHANGED)
        return ReloadReply(True, template_set.version)

    async def _ensure_vm(self, template_set: TemplateSet) -> TenantVM:
        if self.vm is not None and self.vm.broken is None:
            return self.vm
        reason = self.build_reason
        self._services.make_room()
        self.vm = await self._build(template_set)
        await self._after_build(self.vm, template_set, reason)
        return self.vm

    async def _build(self, template_set: TemplateSet) -> TenantVM:
        services = self._services
        return await build_vm(template_set, services.limits, self._tenant_log,
                              services.step_runner(self, "(load)"),
                              cpu_alarm=services.cpu_alarm)

    async def _after_build(self, vm: TenantVM, template_set: TemplateSet,
                           reason: BuildReason) -> None:
        """Before any other event of a fresh VM: ``Startup``, then one ``KeyResume`` per key."""
        self.build_reason = BuildReason.VM_REBUILT
        if "Startup" in template_set.subscriptions:
            await self._run_in(vm, template_set, Event("Startup", {"reason": reason.value}))
        if "KeyResume" not in template_set.subscriptions:
            return
        store = self._services.store
        for record in await store.timers.resume_records(self.tenant, now=time.time()):
            if vm.broken is not None:
                break
            await self._run_in(vm, template_set, Event(
                "KeyResume", {"key": record.key, "scope": record.scope, "value": record.value}))

    async def _run_in(self, vm: TenantVM, template_set: TemplateSet,
                      event: Event) -> list[HandlerResult]:
        services = self._services
        results = await services.runner.run_event(
            vm, template_set, event, self.rate_limiter, self._step_runner(event.name))
        self._after_run(vm)
        return results

    def _after_run(self, vm: TenantVM) -> None:
        if vm.broken is not None and self.vm is vm:
            self.vm = None
            self._tenant_log("warn", "-", f"VM discarded after breaking its {vm.broken} limit; "
                             "it is rebuilt on the next event")

    def _step_runner(self, what: str) -> Any:
        runner = self._runners.get(what)
        if runner is None:
            if len(self._runners) >= _RUNNERS_KEPT:
                self._runners.clear()
            runner = self._runners[what] = self._services.step_runner(self, what)
        return runner

    def _tenant_log(self, level: str, template: str, message: str) -> None:
        self._services.log(self.tenant, level, template, message)


def no_subscriber(event: Event) -> DispatchReply:
    return DispatchReply([], dropped=f"no template of the tenant subscribes to {event.name}")
