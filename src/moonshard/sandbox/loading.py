"""Loading templates into a tenant VM, and validating a template before it is saved."""

from __future__ import annotations

import time
from collections.abc import Mapping

from moonshard.errors import TemplateError
from moonshard.limits import Limits
from moonshard.sandbox.cpualarm import CpuAlarm
from moonshard.sandbox.driver import StepRunner, drive
from moonshard.sandbox.hints import hint_for
from moonshard.sandbox.vm import LogSink, TenantVM
from moonshard.templates import Template, TemplateSet, check_template_shape
from moonshard.tenants import TenantId

__all__ = ["build_vm", "load_template", "validate_template"]


def _discard_log(level: str, template: str, message: str) -> None:
    """Validation runs init.lua in a scratch VM whose output nobody reads."""


async def load_template(
    vm: TenantVM, name: str, files: Mapping[str, str], run_step: StepRunner[object],
) -> tuple[str, ...]:
    """Compiles every file, runs init.lua, records the handlers; raises TemplateError.

    A compile error is worded with a hint when it is a common mistake (``compile_error``); an
    error raised while init.lua runs is named as such (``load_error``), with its file and line.
    """
    try:
        run = vm.start_load(name, files)
    except TemplateError as error:
        hint = hint_for(error.message)
        if hint is None:
            raise
        raise TemplateError(f"{error.message} (hint: {hint})", template=error.template,
                            file=error.file, line=error.line) from None
    result = await drive(run, {}, run_step)
    try:
        return vm.finish_load(name, result)
    except TemplateError as error:
        if error.line is None:
            raise  # the shape of what init.lua returned: not a table, a handler not a function
        raise TemplateError(f"error while loading: {error.message}", template=error.template,
                            file=error.file, line=error.line, code="load_error") from None


async def validate_template(
    tenant: TenantId, name: str, files: Mapping[str, str], limits: Limits,
    run_step: StepRunner[object], *, paused: bool = False,
) -> Template:
    """Checks a template in a scratch VM and returns it with its subscriptions filled in."""
    check_template_shape(name, files, limits)
    vm = TenantVM(tenant, limits, _discard_log)
    events = await load_template(vm, name, files, run_step)
    return Template(name, files, events, paused=paused, updated_at=time.time())


async def build_vm(
    template_set: TemplateSet, limits: Limits, log: LogSink, run_step: StepRunner[object], *,
    cpu_alarm: CpuAlarm | None = None,
) -> TenantVM:
    """A fresh VM with every template of the set loaded (``cpu_alarm``: see ``TenantVM``).

    A template that no longer loads (its limits changed since it was saved, say) is left out
    and the reason logged; the tenant's other templates still run.
    """
    vm = TenantVM(template_set.tenant, limits, log, cpu_alarm=cpu_alarm)
    for template in template_set.templates:
        try:
            await load_template(vm, template.name, template.files, run_step)
        except Exception as error:
            log("error", template.name, f"template failed to load and is skipped: {error}")
    return vm
