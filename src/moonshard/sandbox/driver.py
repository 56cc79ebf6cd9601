"""Driving handler runs: answering host requests and stepping Lua off the event loop."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from moonshard.contracts.sandbox import Capability
from moonshard.errors import HostCallError, LimitExceeded, NotBuiltError, ValueConversionError
from moonshard.events import HandlerResult
from moonshard.sandbox.vm import HostRequest, LuaRun, NowAnswerer
from moonshard.values import JsonValue

__all__ = ["StepRunner", "drive", "run_inline"]

_T = TypeVar("_T")

StepRunner = Callable[[Callable[[], _T]], Awaitable[_T]]
"""Runs one Lua step somewhere (a thread pool, or inline) and awaits it."""

# Errors a host call reports to the template, as a Lua error at the template's line.
_TEMPLATE_VISIBLE = (HostCallError, LimitExceeded, ValueConversionError, NotBuiltError)


async def run_inline(step: Callable[[], _T]) -> _T:
    """Runs the step on the calling thread: for tools and tests with a single tenant."""
    return step()


async def drive(
    run: LuaRun, capabilities: Mapping[str, Capability], run_step: StepRunner[object],
    first: HostRequest | None = None,
) -> HandlerResult:
    """Runs ``run`` to the end, answering its host requests from ``capabilities``: at once
    inside the step where a capability can (``Capability.answer_now``), else awaited here.
    With ``first``, the run has already been stepped (elsewhere) up to that request."""
    answer: tuple[bool, JsonValue] | None = None
    run.now_answerer = _CapabilitiesNow(capabilities)
    try:
        if first is not None:
            answer = await _answer(first, capabilities)
        while True:
            outcome = await run_step(functools.partial(run.step, answer))
            if isinstance(outcome, HandlerResult):
                return outcome
            assert isinstance(outcome, HostRequest)
            answer = await _answer(outcome, capabilities)
    finally:
        run.cancel()


async def _answer(
    request: HostRequest, capabilities: Mapping[str, Capability],
) -> tuple[bool, JsonValue]:
    capability = capabilities.get(request.family)
    name = f"ctx.{request.family}.{request.op}"
    if capability is None:
        return False, f"{name}: ctx.{request.family} is not available here"
    try:
        return True, await capability.call(request.op, request.args)
    except _TEMPLATE_VISIBLE as error:
        return False, f"{name}: {error}"


class _CapabilitiesNow(NowAnswerer):
    """The capabilities' ``answer_now``, with the driver's wording of errors."""

    __slots__ = ("_capabilities",)

    def __init__(self, capabilities: Mapping[str, Capability]) -> None:
        self._capabilities = capabilities

    def answers_now(self, family: str, op: str) -> bool:
        capability = self._capabilities.get(family)
        return capability is not None and capability.answers_now(op)

    def answer_now(self, family: str, op: str,
                   args: list[JsonValue]) -> tuple[bool, JsonValue] | None:
        capability = self._capabilities.get(family)
        if capability is None:
            return None
        try:
            answered = capability.answer_now(op, args)
        except _TEMPLATE_VISIBLE as error:
            return False, f"ctx.{family}.{op}: {error}"
        return None if answered is None else (True, answered[0])
