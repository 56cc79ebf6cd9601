"""Running one template for one tenant on this machine: the engine of ``moonshard exec``.

It wires a real store, real capabilities and one VM together, without workers; emitted events
are delivered after the event that emitted them, as in the service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from moonshard.contracts.host import Capability
from moonshard.discord.capability import DiscordHost
from moonshard.discord.recorder import RecordedCall, RecordingRest
from moonshard.events import Event, HandlerResult
from moonshard.host.ratelimit import GcraLimiter
from moonshard.host.runner import CAPABILITIES, HandlerRunner, RunContext
from moonshard.limits import Limits
from moonshard.sandbox.driver import StepRunner
from moonshard.sandbox.loading import build_vm, validate_template
from moonshard.sandbox.vm import LogSink, TenantVM
from moonshard.store import open_store
from moonshard.store.api import RunCommit, Store
from moonshard.templates import TemplateSet
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["EventReport", "LocalRunner", "RunReport"]

# Emitted events may emit again; this bounds a chain so a loop of emits ends.
_MAX_EVENTS_PER_RUN = 100


@dataclasses.dataclass(frozen=True, slots=True)
class EventReport:
    event: Event
    results: list[HandlerResult]
    # The ctx.discord calls its handlers made: recorded, not sent.
    discord: list[RecordedCall] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, JsonValue]:
        return {"event": {"name": self.event.name, "id": self.event.id},
                "results": [result.to_json() for result in self.results],
                "discord": [call.to_json() for call in self.discord]}


@dataclasses.dataclass(frozen=True, slots=True)
class RunReport:
    """The event's results, then those of the events its handlers emitted."""

    event: Event
    results: list[HandlerResult]
    emitted: list[EventReport]
    subscriptions: tuple[str, ...]
    discord: list[RecordedCall] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        every = [*self.results, *(r for report in self.emitted for r in report.results)]
        return all(result.ok for result in every)

    @property
    def handled(self) -> bool:
        return self.event.name in self.subscriptions

    def to_json(self) -> dict[str, JsonValue]:
        out = EventReport(self.event, self.results, self.discord).to_json()
        out["emitted"] = [report.to_json() for report in self.emitted]
        return out


class LocalRunner:
    """One tenant, one template, one VM, one store."""

    __slots__ = ("_database_url", "_limits", "_log", "_run_step", "_tenant")

    def __init__(self, tenant: TenantId, limits: Limits, database_url: str, log: LogSink,
                 run_step: StepRunner[object]) -> None:
        self._tenant = tenant
        self._limits = limits
        self._database_url = database_url
        self._log = log
        self._run_step = run_step

    async def run(self, name: str, files: Mapping[str, str], event: Event) -> RunReport:
        """Validates and loads the template, then runs ``event`` and what it emits.

        Raises TemplateError (or LimitExceeded) when the template is refused.
        """
        checked = await validate_template(self._tenant, name, files, self._limits,
                                          self._run_step)
        template = dataclasses.replace(checked, version=1)
        template_set = TemplateSet(self._tenant, 1, (template,))
        store = await open_store(self._database_url)
        try:
            return await self._run_events(store, template_set, event)
        finally:
            await store.close()

    async def _run_events(self, store: Store, template_set: TemplateSet,
                          first: Event) -> RunReport:
        queue: list[tuple[Event, int]] = [(first, 0)]
        reports: list[EventReport] = []
        rate_limiter = GcraLimiter()
        vm: TenantVM | None = None
        # ctx.discord is recorded, not sent; scope and limit checks still apply.
        recorder = RecordingRest(self._tenant.id if self._tenant.kind == "guild" else None)
        discord = DiscordHost(recorder, stand_in=True)

        def committed(tenant: TenantId, commit: RunCommit) -> None:
            queue.extend((Event(emitted.name, emitted.data, author=emitted.author,
                                id=emitted.event_id), emitted.id) for emitted in commit.outbox)

        def open_discord(run: RunContext) -> Capability:
            return discord.open_run(run.tenant, run.event, run.rate_limiter, self._log,
                                    run.template.name)

        def log(tenant: TenantId, level: str, template: str, message: str) -> None:
            self._log(level, template, message)

        runner = HandlerRunner(store, self._limits, log, on_commit=committed,
                               capabilities={**CAPABILITIES, "discord": open_discord})
        while queue and len(reports) < _MAX_EVENTS_PER_RUN:
            event, outbox_id = queue.pop(0)
            if vm is None or vm.broken is not None:
                vm = await build_vm(template_set, self._limits, self._log, self._run_step)
            recorded = len(recorder.calls)
            results = await runner.run_event(vm, template_set, event, rate_limiter,
                                             self._run_step)
            if outbox_id:
                await store.runs.delivered(outbox_id)
            reports.append(EventReport(event, results, recorder.calls[recorded:]))
        for _, outbox_id in queue:
            await store.runs.delivered(outbox_id)  # not run (logged below), not kept either
        if queue:
            self._log("warn", template_set.templates[0].name,
                      f"stopped after {_MAX_EVENTS_PER_RUN} events; {len(queue)} emitted events "
                      "were not run")
        head = reports[0]
        return RunReport(head.event, head.results, reports[1:],
                         template_set.templates[0].events, head.discord)
