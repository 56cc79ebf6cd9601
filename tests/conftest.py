"""Shared fixtures: a harness that loads templates into a real lupa VM and runs handlers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pytest

from moonshard.contracts.sandbox import Capability
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.sandbox import TenantVM, drive, run_inline
from moonshard.sandbox.loading import load_template
from moonshard.tenants import TenantId
from moonshard.values import JsonValue


class RecordingCapability(Capability):
    """Answers every call with what ``answer`` says and records it (the sandbox's tests only)."""

    def __init__(self, answer: JsonValue = None) -> None:
        self.calls: list[tuple[str, list[JsonValue]]] = []
        self.answer = answer

    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        self.calls.append((op, list(args)))
        if op == "get":
            return args[0] if args else None
        return self.answer


@dataclasses.dataclass
class Harness:
    limits: Limits = dataclasses.field(default_factory=lambda: Limits(cpu_seconds=0.5))
    tenant: TenantId = dataclasses.field(default_factory=lambda: TenantId.guild(42))
    logs: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    vm: TenantVM | None = None

    def new_vm(self) -> TenantVM:
        self.vm = TenantVM(self.tenant, self.limits, lambda *line: self.logs.append(line))
        return self.vm

    async def load(self, source: str, *, name: str = "t",
                   files: Mapping[str, str] | None = None) -> tuple[str, ...]:
        vm = self.vm or self.new_vm()
        return await load_template(vm, name, {"init.lua": source, **(files or {})}, run_inline)

    async def run(self, event: str, data: JsonValue = None, *, name: str = "t",
                  capabilities: Mapping[str, Capability] | None = None,
                  author: str | None = None) -> HandlerResult:
        assert self.vm is not None
        run = self.vm.start_handler(name, 1, Event(event, data, author=author))
        assert run is not None, f"template {name} has no handler for {event}"
        return await drive(run, capabilities or {}, run_inline)

    async def value(self, body: str, **kwargs: object) -> JsonValue:
        """Loads ``return {RUN = function(ctx, event) <body> end}`` and returns its value."""
        await self.load(f"return {{RUN = function(ctx, event)\n{body}\nend}}")
        result = await self.run("RUN", **kwargs)  # type: ignore[arg-type]
        assert result.ok, result.error
        return result.value

    async def error(self, body: str, **kwargs: object) -> str:
        """Like ``value`` but expects the handler to fail; returns the error."""
        await self.load(f"return {{RUN = function(ctx, event)\n{body}\nend}}")
        result = await self.run("RUN", **kwargs)  # type: ignore[arg-type]
        assert not result.ok, f"expected a failure, got {result.value!r}"
        assert result.error is not None
        return result.error


@pytest.fixture
def harness() -> Harness:
    return Harness()
