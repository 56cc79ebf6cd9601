"""Loading templates into a tenant VM, and validating a template before it is saved."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import cast

from moonshard.errors import TemplateError
from moonshard.events import HandlerResult
from moonshard.limits import Limits
from moonshard.sandbox.cpualarm import CpuAlarm
from moonshard.sandbox.driver import StepRunner
from moonshard.sandbox.hints import hint_for
from moonshard.sandbox.vm import HostRequest, LogSink, LuaRun, TenantVM
from moonshard.templates import Template, TemplateSet, check_template_shape
from moonshard.tenants import TenantId

__all__ = ["build_vm", "load_template", "validate_template"]

# A load's first step gives its run and the run's first outcome.
_FirstStep = tuple[LuaRun, HandlerResult | HostRequest]


def _discard_log(level: str, template: str, message: str) -> None:
    """Validation runs init.lua in a scratch VM whose output nobody reads."""


async def load_template(
    vm: TenantVM, name: str, files: Mapping[str, str], run_step: StepRunner[object],
) -> tuple[str, ...]:
    """Compiles every file, runs init.lua, records the handlers; raises TemplateError.

    A compile error is worded with a hint when it is a common mistake (``compile_error``); an
    error raised while init.lua runs is named as such (``load_error``), with its file and line.
    """
    return await _load(lambda: vm, name, files, run_step, collect=False)


async def _load(
    get_vm: Callable[[], TenantVM], name: str, files: Mapping[str, str],
    run_step: StepRunner[object], *, collect: bool,
) -> tuple[str, ...]:
    """``load_template`` on the VM ``get_vm`` gives, which is called in the first step (on
    ``run_step``'s thread, so building a VM is watched like any Lua step). Compiling and
    running init.lua share that step; ``collect`` ends it with a full garbage collection."""

    def first_step() -> _FirstStep:
        vm = get_vm()
        try:
            run = vm.start_load(name, files)
            return run, run.step()
        finally:
            if collect:
                vm.collect_garbage()

    try:
        run, outcome = cast(_FirstStep, await run_step(first_step))
    except TemplateError as error:
        hint = hint_for(error.message)
        if hint is None:
            raise
        raise TemplateError(f"{error.message} (hint: {hint})", template=error.template,
                            file=error.file, line=error.line) from None
    try:
        # init.lua has no ctx, so it never waits for the host; answered as drive would.
        while isinstance(outcome, HostRequest):
            answer = (False, f"ctx.{outcome.family}.{outcome.op}: ctx.{outcome.family} is "
                             "not available here")
            outcome = cast(HandlerResult | HostRequest,
                           await run_step(functools.partial(run.step, answer)))
    finally:
        run.cancel()
    try:
        return get_vm().finish_load(name, outcome)
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
    made = _OneVM(tenant, limits, _discard_log, None)
    events = await _load(made.get, name, files, run_step, collect=False)
    return Template(name, files, events, paused=paused, updated_at=time.time())


async def build_vm(
    template_set: TemplateSet, limits: Limits, log: LogSink, run_step: StepRunner[object], *,
    cpu_alarm: CpuAlarm | None = None,
) -> TenantVM:
    """A fresh VM with every template of the set loaded (``cpu_alarm``: see ``TenantVM``).

    A template that no longer loads (its limits changed since it was saved, say) is left out
    and the reason logged; the tenant's other templates still run. The VM is made in the
    first template's first step, on ``run_step``'s thread; the last template's step ends with
    a full garbage collection, so that an idle VM holds no compile garbage (an idle VM
    allocates nothing that would make the collector run).
    """
    made = _OneVM(template_set.tenant, limits, log, cpu_alarm)
    templates = template_set.templates
    for position, template in enumerate(templates):
        try:
            await _load(made.get, template.name, template.files, run_step,
                        collect=position == len(templates) - 1)
        except Exception as error:
            if made.vm is None:
                raise  # the VM itself could not be made: no template's fault
            log("error", template.name, f"template failed to load and is skipped: {error}")
    if made.vm is None:
        await run_step(made.get)  # no template: the VM is still built on run_step's thread
    return made.get()


class _OneVM:
    """Makes one VM the first time it is asked for (on whatever thread asks)."""

    __slots__ = ("_alarm", "_limits", "_log", "_tenant", "vm")

    def __init__(self, tenant: TenantId, limits: Limits, log: LogSink,
                 cpu_alarm: CpuAlarm | None) -> None:
        self._tenant, self._limits, self._log = tenant, limits, log
        self._alarm = cpu_alarm
        self.vm: TenantVM | None = None

    def get(self) -> TenantVM:
        if self.vm is None:
            self.vm = TenantVM(self._tenant, self._limits, self._log, cpu_alarm=self._alarm)
        return self.vm
