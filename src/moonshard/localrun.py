"""Running one template for one tenant on this machine: the engine of ``moonshard exec`` and
``moonshard dev``.

It wires a real store, real capabilities and one VM together, without workers; emitted events
are delivered after the event that emitted them, as in the service. Timers (key expiries,
scheduled events) are read back from the store and fired by ``LocalSession.run_timers`` on a
``LocalClock``: the real one, or a fast-forwarded one that jumps to the next due timer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping

from moonshard.contracts.host import Capability
from moonshard.discord.capability import DiscordHost
from moonshard.discord.recorder import RecordedCall, RecordingRest
from moonshard.events import Event, HandlerResult
from moonshard.host.events import EventsCapability
from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.host.runner import CAPABILITIES, HandlerRunner, RunContext
from moonshard.limits import Limits
from moonshard.sandbox.driver import StepRunner
from moonshard.sandbox.loading import build_vm, validate_template
from moonshard.sandbox.vm import LogSink, TenantVM
from moonshard.store import open_store
from moonshard.store.api import RunCommit, Store
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId
from moonshard.timers.delivery import stable_id
from moonshard.values import JsonValue

__all__ = ["EventReport", "LocalClock", "LocalRunner", "LocalSession", "RunReport"]

# Emitted events may emit again; this bounds a chain so a loop of emits ends.
_MAX_EVENTS_PER_RUN = 100
_PAGE = 100


class LocalClock:
    """The time of a local run. Real, or fast: ``advance_to`` jumps it forward to a timer's
    due time, so a ttl of a day fires at once. Only ``moonshard dev`` and ``exec`` make one;
    the service's clock is always the real one."""

    __slots__ = ("_offset", "fast")

    def __init__(self, *, fast: bool = False) -> None:
        self.fast = fast
        self._offset = 0.0

    def now(self) -> float:
        return time.time() + self._offset

    def advance_to(self, at: float) -> None:
        if self.fast and at > self.now():
            self._offset += at - self.now()


@dataclasses.dataclass(frozen=True, slots=True)
class EventReport:
    event: Event
    results: list[HandlerResult]
    # The ctx.discord calls its handlers made: recorded, not sent.
    discord: list[RecordedCall] = dataclasses.field(default_factory=list)
    # What made it run: "event", "emitted", "scheduled", "expiry", "startup", "resume".
    cause: str = "event"
    # The (local clock's) time it ran at.
    at: float = 0.0

    def to_json(self) -> dict[str, JsonValue]:
        return {"event": {"name": self.event.name, "id": self.event.id,
                          "data": self.event.data},
                "cause": self.cause, "at": round(self.at, 3),
                "results": [result.to_json() for result in self.results],
                "discord": [call.to_json() for call in self.discord]}


@dataclasses.dataclass(frozen=True, slots=True)
class RunReport:
    """The event's results, then those of the events its handlers emitted (and, with
    ``until_idle``, of the timers it armed)."""

    event: Event
    results: list[HandlerResult]
    emitted: list[EventReport]
    subscriptions: tuple[str, ...]
    discord: list[RecordedCall] = dataclasses.field(default_factory=list)
    # Events run before it: the Startup and KeyResume of a fresh VM.
    before: list[EventReport] = dataclasses.field(default_factory=list)
    # Timers still pending when the run stopped (its bound was reached, or they lie ahead).
    pending: int = 0

    @property
    def ok(self) -> bool:
        every = [*self.results, *(r for report in [*self.before, *self.emitted]
                                  for r in report.results)]
        return all(result.ok for result in every)

    @property
    def handled(self) -> bool:
        return self.event.name in self.subscriptions

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "event": {"name": self.event.name, "id": self.event.id},
            "results": [result.to_json() for result in self.results],
            "discord": [call.to_json() for call in self.discord]}
        out["emitted"] = [report.to_json() for report in self.emitted]
        if self.before:
            out["before"] = [report.to_json() for report in self.before]
        if self.pending:
            out["pending_timers"] = self.pending
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class _Timer:
    kind: str  # "expiry" or "scheduled"
    due: float
    scope: str
    key: str
    version: int


class LocalSession:
    """One tenant's store, template set, VM and recording Discord, kept across events.

    ``load`` swaps in a new version of the template only once it validated: a broken save
    leaves the old one running. Use as ``async with LocalSession(...) as session``.
    """

    __slots__ = (
        "_clock",
        "_database_url",
        "_limits",
        "_log",
        "_queue",
        "_rate_limiter",
        "_recorder",
        "_run_step",
        "_runner",
        "_set",
        "_store",
        "_tenant",
        "_vm",
        "_vm_reason",
        "on_report",
    )

    def __init__(self, tenant: TenantId, limits: Limits, database_url: str, log: LogSink,
                 run_step: StepRunner[object], clock: LocalClock | None = None) -> None:
        self._tenant = tenant
        self._limits = limits
        self._database_url = database_url
        self._log = log
        self._run_step = run_step
        self._clock = clock or LocalClock()
        self._store: Store | None = None
        self._runner: HandlerRunner | None = None
        self._set: TemplateSet | None = None
        self._vm: TenantVM | None = None
        self._vm_reason = "worker_start"
        self._queue: list[tuple[Event, int]] = []
        self._rate_limiter = GcraLimiter()
        # ctx.discord is recorded, not sent; scope and limit checks still apply.
        self._recorder = RecordingRest(tenant.id if tenant.kind == "guild" else None)
        # Told of each event as soon as it ran (dev prints it there, after its print lines).
        self.on_report: Callable[[EventReport], None] | None = None

    @property
    def clock(self) -> LocalClock:
        return self._clock

    @property
    def template(self) -> Template | None:
        return self._set.templates[0] if self._set is not None else None

    async def __aenter__(self) -> LocalSession:
        store = await open_store(self._database_url)
        self._store = store
        clock = self._clock.now
        discord = DiscordHost(self._recorder, stand_in=True)

        def kv(run: RunContext) -> Capability:
            return KVSession(run.store.kv, run.tenant, run.limits, run.rate_limiter,
                             clock=clock)

        def events(run: RunContext) -> Capability:
            return EventsCapability(run.tenant, run.limits, run.store.timers,
                                    author=run.event.author, clock=clock)

        def open_discord(run: RunContext) -> Capability:
            return discord.open_run(run.tenant, run.event, run.rate_limiter, self._log,
                                    run.template.name)

        def log(tenant: TenantId, level: str, template: str, message: str) -> None:
            self._log(level, template, message)

        self._runner = HandlerRunner(
            store, self._limits, log, on_commit=self._committed, clock=clock,
            capabilities={**CAPABILITIES, "kv": kv, "events": events, "discord": open_discord},
            opened_at_start=frozenset({"discord"}))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    def _committed(self, tenant: TenantId, commit: RunCommit) -> None:
        self._queue.extend((Event(emitted.name, emitted.data, author=emitted.author,
                                  id=emitted.event_id), emitted.id)
                           for emitted in commit.outbox)

    async def load(self, name: str, files: Mapping[str, str]) -> Template:
        """Validates the template and makes it the one that runs; raises TemplateError (or
        LimitExceeded) and keeps the old one when it is refused."""
        checked = await validate_template(self._tenant, name, files, self._limits,
                                          self._run_step)
        version = self._set.version + 1 if self._set is not None else 1
        template = dataclasses.replace(checked, version=version)
        if self._set is not None:
            self._vm_reason = "templates_changed"
        self._set = TemplateSet(self._tenant, version, (template,))
        self._vm = None
        return template

    def _parts(self) -> tuple[Store, HandlerRunner, TemplateSet]:
        if self._store is None or self._runner is None or self._set is None:
            raise RuntimeError("the session is not open or has no template loaded")
        return self._store, self._runner, self._set

    async def _run_one(self, event: Event, cause: str) -> EventReport:
        _, runner, template_set = self._parts()
        recorded = len(self._recorder.calls)
        assert self._vm is not None
        results = await runner.run_event(self._vm, template_set, event, self._rate_limiter,
                                         self._run_step)
        report = EventReport(event, results, self._recorder.calls[recorded:], cause,
                             self._clock.now())
        if self.on_report is not None:
            self.on_report(report)
        return report

    async def _ensure_vm(self) -> list[EventReport]:
        """Builds the VM when there is none (or it broke a limit): Startup, then KeyResume."""
        store, _, template_set = self._parts()
        if self._vm is not None and self._vm.broken is None:
            return []
        if self._vm is not None:
            self._vm_reason = "vm_rebuilt"
        self._vm = await build_vm(template_set, self._limits, self._log, self._run_step)
        reason, self._vm_reason = self._vm_reason, "vm_rebuilt"
        reports: list[EventReport] = []
        if "Startup" in template_set.subscriptions:
            reports.append(await self._run_one(Event("Startup", {"reason": reason}), "startup"))
        if "KeyResume" in template_set.subscriptions:
            for record in await store.timers.resume_records(self._tenant,
                                                            now=self._clock.now()):
                reports.append(await self._run_one(Event("KeyResume", {
                    "key": record.key, "scope": record.scope, "value": record.value}),
                    "resume"))
        return reports

    async def run(self, event: Event, *, until_idle: bool = False,
                  max_events: int = _MAX_EVENTS_PER_RUN) -> RunReport:
        """Runs ``event`` and what it emits; with ``until_idle``, also the timers it armed (on
        this session's clock), until none is due or ``max_events`` events ran."""
        _, _, template_set = self._parts()
        before = await self._ensure_vm()
        head = await self._run_one(event, "event")
        reports = await self._drain(max_events - 1)
        if until_idle:
            reports += await self.run_timers(max_events - 1 - len(reports))
        pending = len(await self.pending_timers())
        return RunReport(head.event, head.results, reports, template_set.templates[0].events,
                         head.discord, before, pending)

    async def _drain(self, budget: int) -> list[EventReport]:
        """Runs the emitted events queued so far, and what they emit, up to ``budget``."""
        store, _, template_set = self._parts()
        reports: list[EventReport] = []
        while self._queue and len(reports) < budget:
            event, outbox_id = self._queue.pop(0)
            reports += await self._ensure_vm()
            reports.append(await self._run_one(event, "emitted"))
            if outbox_id:
                await store.runs.delivered(outbox_id)
        if self._queue:
            for _, outbox_id in self._queue:
                await store.runs.delivered(outbox_id)  # not run (logged), not kept either
            self._log("warn", template_set.templates[0].name,
                      f"stopped after {budget} events; {len(self._queue)} emitted events "
                      "were not run")
            self._queue.clear()
        return reports

    async def pending_timers(self) -> list[_Timer]:
        """The tenant's stored timers, soonest first."""
        store = self._store
        if store is None:
            return []
        found: list[_Timer] = []
        cursor: tuple[float, str, str, str, str] = (-math.inf, "", "", "", "")
        while True:
            rows = await store.timers.expiries_after(cursor, math.inf, _PAGE)
            for tenant, record in rows:
                if tenant == self._tenant and record.expires_at is not None:
                    found.append(_Timer("expiry", record.expires_at, record.scope, record.key,
                                        record.version))
            if len(rows) < _PAGE:
                break
            last_tenant, last = rows[-1]
            cursor = (last.expires_at or 0.0, last_tenant.kind, last_tenant.id, last.scope,
                      last.key)
        after: tuple[float, int] = (-math.inf, 0)
        while True:
            events = await store.timers.scheduled_after(after, math.inf, _PAGE)
            found += [_Timer("scheduled", event.due_at, "", event.name, event.id)
                      for event in events if event.tenant == self._tenant]
            if len(events) < _PAGE:
                break
            after = events[-1].cursor
        return sorted(found, key=lambda timer: (timer.due, timer.kind == "scheduled"))

    async def run_timers(self, budget: int = _MAX_EVENTS_PER_RUN) -> list[EventReport]:
        """Fires every timer that is due (on a fast clock: every pending timer, the clock
        jumping to each in turn), and what they emit, up to ``budget`` events."""
        reports: list[EventReport] = []
        while len(reports) < budget:
            timers = await self.pending_timers()
            if not timers:
                break
            timer = timers[0]
            self._clock.advance_to(timer.due)
            if timer.due > self._clock.now():
                break
            reports += await self._fire(timer)
            reports += await self._drain(budget - len(reports))
        return reports

    async def _fire(self, timer: _Timer) -> list[EventReport]:
        """Runs one due timer's event, then removes it. A failed handler is reported; the
        timer is removed all the same (the service would retry it with backoff)."""
        store, _, template_set = self._parts()
        tenant = self._tenant
        if timer.kind == "expiry":
            record, _ = await store.kv.load_row(tenant, timer.scope, timer.key)
            if record is None or record.version != timer.version or record.expires_at is None:
                return []
            expires_at = record.expires_at
            event = Event("KeyExpiry", {"key": record.key, "scope": record.scope,
                                        "value": record.value, "expires_at": expires_at,
                                        "attempt": 1},
                          id=stable_id("expiry", tenant, timer.scope, timer.key, timer.version))
            reports: list[EventReport] = []
            if "KeyExpiry" in template_set.subscriptions:
                reports += await self._ensure_vm()
                reports.append(await self._run_one(event, "expiry"))
            await store.timers.delete_if_version(tenant, timer.scope, timer.key,
                                                 timer.version, expires_at=expires_at)
            return reports
        scheduled = await store.timers.get_scheduled(timer.version)
        if scheduled is None:
            return []
        event = Event(scheduled.name, scheduled.data, id=stable_id(
            "scheduled", tenant, "", str(scheduled.id), scheduled.id))
        reports = []
        if scheduled.name in template_set.subscriptions:
            reports += await self._ensure_vm()
            reports.append(await self._run_one(event, "scheduled"))
        await store.timers.remove_scheduled(scheduled.id)
        return reports


class LocalRunner:
    """One tenant, one template, one VM, one store: one event (``moonshard exec``)."""

    __slots__ = ("_clock", "_database_url", "_limits", "_log", "_run_step", "_tenant")

    def __init__(self, tenant: TenantId, limits: Limits, database_url: str, log: LogSink,
                 run_step: StepRunner[object], clock: LocalClock | None = None) -> None:
        self._tenant = tenant
        self._limits = limits
        self._database_url = database_url
        self._log = log
        self._run_step = run_step
        self._clock = clock

    async def run(self, name: str, files: Mapping[str, str], event: Event, *,
                  until_idle: bool = False,
                  max_events: int = _MAX_EVENTS_PER_RUN) -> RunReport:
        """Validates and loads the template, then runs ``event`` and what it emits (with
        ``until_idle``, what it scheduled and armed too).

        Raises TemplateError (or LimitExceeded) when the template is refused.
        """
        async with LocalSession(self._tenant, self._limits, self._database_url, self._log,
                                self._run_step, self._clock) as session:
            await session.load(name, files)
            return await session.run(event, until_idle=until_idle, max_events=max_events)
