"""Running one event through a tenant's VM: one handler run (and one transaction) per template."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from moonshard.events import Event, HandlerResult
from moonshard.host.api import Capability, RunScope
from moonshard.sandbox.driver import StepRunner, drive
from moonshard.sandbox.vm import LogSink, TenantVM
from moonshard.templates import Template, TemplateSet

__all__ = ["CapabilityOpener", "dispatch_event"]

CapabilityOpener = Callable[[Template, Event], Mapping[str, Capability]]
"""Gives the capabilities of one handler run; those that are also RunScopes are committed."""


async def dispatch_event(
    vm: TenantVM, template_set: TemplateSet, event: Event, open_capabilities: CapabilityOpener,
    run_step: StepRunner[object], log: LogSink,
) -> list[HandlerResult]:
    """Runs ``event`` through every subscribing template, in name order.

    Each handler's writes commit when it succeeds and are discarded when it fails; a
    handler is reported done only after its commit.
    """
    results: list[HandlerResult] = []
    for template in template_set.subscribers(event.name):
        if vm.broken is not None:
            results.append(HandlerResult(
                template.name, False,
                error=f"not run: the tenant's VM broke its {vm.broken} limit in this event"))
            continue
        results.append(await _run_one(vm, template, event, open_capabilities, run_step, log))
    return results


async def _run_one(
    vm: TenantVM, template: Template, event: Event, open_capabilities: CapabilityOpener,
    run_step: StepRunner[object], log: LogSink,
) -> HandlerResult:
    run = vm.start_handler(template.name, template.version, event)
    if run is None:
        return HandlerResult(template.name, False, error="the template is not loaded in this VM")
    capabilities = open_capabilities(template, event)
    scopes = [cap for cap in capabilities.values() if isinstance(cap, RunScope)]
    result = await drive(run, capabilities, run_step)
    if result.ok:
        try:
            for scope in scopes:
                await scope.commit()
        except Exception as error:
            result = HandlerResult(template.name, False, error=f"commit failed: {error}")
            for scope in scopes:
                await scope.rollback()
    else:
        for scope in scopes:
            await scope.rollback()
    if not result.ok:
        detail = f"\n{result.traceback}" if result.traceback else ""
        log("error", template.name, f"{event.name} handler failed: {result.error}{detail}")
    return result
