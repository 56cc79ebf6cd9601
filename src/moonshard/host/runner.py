"""Running one event through a tenant's VM: one handler run, and one transaction, per template.

``HandlerRunner`` opens the capabilities of each run from ``CAPABILITIES`` (family -> factory;
the one place a capability is wired in), drives the handler, and commits everything the run
asked for (kv writes, schedules and cancellations, emitted events) in one store transaction
(``RunStore.commit_run``). Only after that commit does it tell its owner (``on_commit``), who
arms timers and hands emitted events on. A failed handler, or a failed commit, leaves nothing.

A capability is opened when the run first calls its family (most runs call few or none, and
this is on every event's path), unless its family is opened at the start because opening it
does something by itself (Discord: learning channels, deferring a late interaction).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType

from moonshard.contracts.host import Capability, RunScope
from moonshard.errors import LimitExceeded
from moonshard.events import Event, HandlerResult
from moonshard.host.events import EventsCapability
from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.limits import Limits
from moonshard.sandbox.driver import StepRunner, drive
from moonshard.sandbox.vm import HostRequest, LuaRun, TenantVM
from moonshard.store.api import RunCommit, RunEffects, RunLimits, Store
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId

__all__ = ["CAPABILITIES", "CapabilityFactory", "HandlerRunner", "RunContext", "merge_effects"]


@dataclasses.dataclass(frozen=True, slots=True)
class RunContext:
    """What a capability of one handler run may use."""

    tenant: TenantId
    template: Template
    event: Event
    limits: Limits
    store: Store
    rate_limiter: GcraLimiter


CapabilityFactory = Callable[[RunContext], Capability]
"""Opens one capability for one handler run; if it is also a ``RunScope``, its effects are
committed with the run."""


def _kv(run: RunContext) -> Capability:
    return KVSession(run.store.kv, run.tenant, run.limits, run.rate_limiter)


def _events(run: RunContext) -> Capability:
    return EventsCapability(run.tenant, run.limits, run.store.timers, author=run.event.author)


CAPABILITIES: Mapping[str, CapabilityFactory] = MappingProxyType({"kv": _kv, "events": _events})
# How long one Lua step may go on starting further runs of ``run_events`` (each run keeps its
# own CPU limit; this only bounds how long the step holds its Lua thread beyond one run).
_SHARED_STEP_SECONDS = 0.005
"""The capabilities of every handler run, by family (``ctx.<family>``)."""

OnCommit = Callable[[TenantId, RunCommit], None]
"""Told what a run's commit stored: its owner arms timers and hands emitted events on."""


def merge_effects(parts: list[RunEffects]) -> RunEffects:
    """The effects of a run's capabilities as one."""
    return RunEffects(
        writes=tuple(write for part in parts for write in part.writes),
        events=tuple(op for part in parts for op in part.events),
        emits=tuple(emit for part in parts for emit in part.emits))


class _OpenedOnUse(Mapping[str, Capability]):
    """The capabilities of one run, each opened the first time the run asks for it."""

    __slots__ = ("_context", "_factories", "opened")

    def __init__(self, factories: Mapping[str, CapabilityFactory], context: RunContext,
                 at_start: frozenset[str]) -> None:
        self._factories = factories
        self._context = context
        self.opened: dict[str, Capability] = {
            family: factories[family](context) for family in sorted(at_start)
            if family in factories}

    def __getitem__(self, family: str) -> Capability:
        capability = self.opened.get(family)
        if capability is None:
            capability = self.opened[family] = self._factories[family](self._context)
        return capability

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)


class HandlerRunner:
    """Runs events through VMs of one store, with the capabilities of ``capabilities``;
    those of ``opened_at_start`` are opened when each run starts, the others on first use."""

    __slots__ = ("_at_start", "_capabilities", "_clock", "_limits", "_log", "_on_commit",
                 "_store")

    def __init__(
        self, store: Store, limits: Limits, log: Callable[[TenantId, str, str, str], None], *,
        on_commit: OnCommit | None = None,
        capabilities: Mapping[str, CapabilityFactory] = CAPABILITIES,
        opened_at_start: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._limits = limits
        self._log = log
        self._on_commit = on_commit
        self._capabilities = capabilities
        self._at_start = opened_at_start
        self._clock = clock

    async def run_event(
        self, vm: TenantVM, template_set: TemplateSet, event: Event,
        rate_limiter: GcraLimiter, run_step: StepRunner[object],
    ) -> list[HandlerResult]:
        """Runs ``event`` through every subscribing template, in name order; each handler is
        reported done only after its commit."""
        results: list[HandlerResult] = []
        for template in template_set.subscribers(event.name):
            if vm.broken is not None:
                results.append(HandlerResult(
                    template.name, False,
                    error=f"not run: the tenant's VM broke its {vm.broken} limit in this event"))
                continue
            results.append(await self._run_one(vm, template, event, rate_limiter, run_step))
        return results

    async def run_events(
        self, vm: TenantVM, template_set: TemplateSet, events: Sequence[Event],
        rate_limiter: GcraLimiter, run_step: StepRunner[object],
    ) -> list[list[HandlerResult]]:
        """Runs the first of ``events`` and maybe some of those after it, in order, as
        ``run_event`` would run each; gives the results of those run (never none).

        The handler runs are started one after another in one Lua step, as long as each ends
        without a host call (so it has nothing to commit) and the step is younger than
        ``_SHARED_STEP_SECONDS``: a backlog of trivial handlers costs one hand-off to a Lua
        thread, not one each. The first run that calls the host goes on as a run of its own
        and ends the events run (what it writes may change what comes after).
        """
        planned = [(index, template) for index, event in enumerate(events)
                   for template in template_set.subscribers(event.name)]
        if not planned or not all(vm.handles(template.name, events[index].name)
                                  for index, template in planned):
            # Nothing to run, or a template not loaded: the one-by-one path reports it.
            return [await self.run_event(vm, template_set, events[0], rate_limiter, run_step)]
        runs: list[tuple[int, Template, LuaRun]] = []

        def step_several() -> list[HostRequest | HandlerResult]:
            # On a Lua thread, under the watchdog like any step.
            outcomes: list[HostRequest | HandlerResult] = []
            until = time.monotonic() + _SHARED_STEP_SECONDS
            for index, template in planned:
                if outcomes and (time.monotonic() > until or vm.broken is not None):
                    break
                run = vm.start_handler(template.name, template.version, events[index])
                assert run is not None  # checked above
                runs.append((index, template, run))
                outcome = run.step(None)
                outcomes.append(outcome)
                if isinstance(outcome, HostRequest):
                    break
            return outcomes

        try:
            stepped = await run_step(step_several)
        except BaseException:
            for _, _, run in runs:  # as drive() does when a step fails
                run.cancel()
            raise
        assert isinstance(stepped, list)
        last_event = planned[len(stepped) - 1][0]
        results: list[list[HandlerResult]] = [[] for _ in range(last_event + 1)]
        for (index, template, run), outcome in zip(runs, stepped, strict=False):
            if isinstance(outcome, HostRequest):
                results[index].append(await self._run_one(
                    vm, template, events[index], rate_limiter, run_step, (run, outcome)))
                continue
            run.cancel()
            if not outcome.ok:
                self._log_failure(vm.tenant, template, events[index], outcome)
            results[index].append(outcome)
        # The templates of the last event that the step did not reach run one by one.
        for index, template in planned[len(stepped):]:
            if index != last_event:
                break
            if vm.broken is not None:
                results[index].append(HandlerResult(
                    template.name, False,
                    error=f"not run: the tenant's VM broke its {vm.broken} limit in this event"))
                continue
            results[index].append(await self._run_one(vm, template, events[index],
                                                      rate_limiter, run_step))
        return results

    async def _run_one(
        self, vm: TenantVM, template: Template, event: Event, rate_limiter: GcraLimiter,
        run_step: StepRunner[object], started: tuple[LuaRun, HostRequest] | None = None,
    ) -> HandlerResult:
        """One handler run and its commit; ``started``: the run, already stepped up to its
        first host request."""
        tenant = vm.tenant
        if started is None:
            run = vm.start_handler(template.name, template.version, event)
            first = None
        else:
            run, first = started
        if run is None:
            return HandlerResult(template.name, False,
                                 error="the template is not loaded in this VM")
        context = RunContext(tenant, template, event, self._limits, self._store, rate_limiter)
        capabilities = _OpenedOnUse(self._capabilities, context, self._at_start)
        result = await drive(run, capabilities, run_step, first)
        scopes: list[RunScope] = [cap for cap in capabilities.opened.values()
                                  if isinstance(cap, RunScope)]
        if result.ok and scopes:
            result = await self._commit(tenant, template, scopes, result)
        else:
            for scope in scopes:
                scope.discard()
        if not result.ok:
            self._log_failure(tenant, template, event, result)
        return result

    def _log_failure(self, tenant: TenantId, template: Template, event: Event,
                     result: HandlerResult) -> None:
        detail = f"\n{result.traceback}" if result.traceback else ""
        self._log(tenant, "error", template.name,
                  f"{event.name} handler failed: {result.error}{detail}")

    async def _commit(
        self, tenant: TenantId, template: Template, scopes: list[RunScope],
        result: HandlerResult,
    ) -> HandlerResult:
        effects = merge_effects([scope.take_effects() for scope in scopes])
        if effects.empty:
            return result  # nothing to store, and nothing for the owner to arm or hand on
        limits = self._limits
        try:
            commit = await self._store.runs.commit_run(
                tenant, effects, now=self._clock(), limits=RunLimits(
                    max_keys=limits.keys_per_tenant, max_pending=limits.scheduled_per_tenant,
                    max_emits=limits.emits_per_dispatch))
        except LimitExceeded as error:
            return HandlerResult(template.name, False, error=f"commit refused: {error}",
                                 limit=None)
        except Exception as error:  # the store failed: the run is not done, nothing is stored
            return HandlerResult(template.name, False, error=f"commit failed: {error}")
        if self._on_commit is not None:
            self._on_commit(tenant, commit)
        return result
