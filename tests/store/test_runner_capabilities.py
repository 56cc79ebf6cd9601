"""The handler runner opens a run's capabilities when the run first uses them (or at its start,
for the families that do something by being opened), and commits only what was opened."""

from __future__ import annotations

import time

from moonshard.contracts.sandbox import Capability
from moonshard.events import Event
from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.host.runner import CAPABILITIES, CapabilityFactory, HandlerRunner, RunContext
from moonshard.limits import Limits
from moonshard.sandbox.driver import run_inline
from moonshard.sandbox.vm import TenantVM
from moonshard.store.api import Store
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId

TENANT = TenantId.guild(77)
SOURCE = """
return {
  NOTHING = function(ctx, event) return 1 end,
  READ = function(ctx, event) ctx.kv.get("a") return ctx.kv.get("b") end,
  WRITE = function(ctx, event) ctx.kv.set("k", event.data.v) return true end,
}
"""


def counting(opened: list[str], family: str, factory: CapabilityFactory) -> CapabilityFactory:
    def open_counted(run: RunContext) -> Capability:
        opened.append(family)
        return factory(run)
    return open_counted


async def run(store: Store, runner: HandlerRunner, event: Event) -> object:
    vm = TenantVM(TENANT, Limits(), lambda *line: None)
    load = vm.start_load("t", {"init.lua": SOURCE})
    vm.finish_load("t", load.step())
    templates = TemplateSet(TENANT, 1, (Template("t", {"init.lua": SOURCE},
                                                 ("NOTHING", "READ", "WRITE")),))
    [result] = await runner.run_event(vm, templates, event, GcraLimiter(), run_inline)
    assert result.ok, result.error
    return result.value


async def test_capabilities_open_on_first_use_only(store: Store) -> None:
    opened: list[str] = []
    factories = {family: counting(opened, family, factory)
                 for family, factory in CAPABILITIES.items()}
    commits: list[object] = []
    runner = HandlerRunner(store, Limits(), lambda *line: None, capabilities=factories,
                           on_commit=lambda tenant, commit: commits.append(commit))
    assert await run(store, runner, Event("NOTHING")) == 1
    assert opened == []
    assert await run(store, runner, Event("READ")) is None
    assert opened == ["kv"]  # once for the run, though it called twice
    assert commits == []  # reads only: nothing to commit, nothing to hand on
    assert await run(store, runner, Event("WRITE", {"v": 5})) is True
    assert opened == ["kv", "kv"]
    assert len(commits) == 1
    stored = await store.kv.get(TENANT, "default", "k", now=time.time())
    assert stored is not None
    assert stored.value == 5


async def test_families_opened_at_start_open_for_every_run(store: Store) -> None:
    opened: list[str] = []
    sessions: list[KVSession] = []

    def open_kv(context: RunContext) -> Capability:
        opened.append("kv")
        session = KVSession(context.store.kv, context.tenant, context.limits,
                            context.rate_limiter)
        sessions.append(session)
        return session

    runner = HandlerRunner(store, Limits(), lambda *line: None,
                           capabilities={**CAPABILITIES, "kv": open_kv},
                           opened_at_start=frozenset({"kv"}))
    assert await run(store, runner, Event("NOTHING")) == 1
    assert opened == ["kv"]
    # The unused session was still ended with the run (its effects taken, none stored).
    assert sessions[0].pending_writes == 0
