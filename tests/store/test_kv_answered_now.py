"""``ctx.kv.get`` answered on the Lua thread (``Capability.answer_now``): on SQLite from a
read connection owned by the thread, on PostgreSQL through the awaited path; the same
answers, errors and limits either way.

Each template runs through the real ``HandlerRunner`` with its Lua steps on a thread of their
own, as a worker runs them. The awaited path for comparison is the same ``KVSession`` with its
fast path turned off (``AwaitedKV``), on the same store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import pytest

from moonshard.contracts.sandbox import Capability
from moonshard.events import Event, HandlerResult
from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter, Rate
from moonshard.host.runner import CAPABILITIES, CapabilityFactory, HandlerRunner, RunContext
from moonshard.limits import Limits
from moonshard.sandbox.driver import StepRunner
from moonshard.sandbox.loading import build_vm
from moonshard.store.api import KVDelete, KVSet, Store
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

_T = TypeVar("_T")


class AwaitedKV(KVSession):
    """``ctx.kv`` with every call awaited: what ``get`` answered before the fast path."""

    __slots__ = ()

    def answers_now(self, op: str) -> bool:
        return False


def _awaited_kv(run: RunContext) -> Capability:
    return AwaitedKV(run.store.kv, run.tenant, run.limits, run.rate_limiter)


AWAITED = {**CAPABILITIES, "kv": _awaited_kv}


class StoreWriter(Capability):
    """``ctx.discord.put(key, value)`` in these tests: commits a key through the store from
    the event loop, as another run (or the HTTP API) would, while the calling run waits."""

    def __init__(self, store: Store, tenant: TenantId) -> None:
        self._store = store
        self._tenant = tenant

    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        key, value = args[0], args[1]
        assert isinstance(key, str)
        await self._store.kv.apply(self._tenant, [KVSet("default", key, value)],
                                   now=time.time())
        return True


@pytest.fixture
async def lua_thread() -> AsyncIterator[StepRunner[object]]:
    """Lua steps on one thread of their own, as on a worker's Lua thread."""
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-lua")

    async def run_step(step: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(executor, step)

    yield run_step
    executor.shutdown(wait=True)


Run = Callable[..., Awaitable[HandlerResult]]


@pytest.fixture
def run(store: Store, tenant: TenantId, lua_thread: StepRunner[object]) -> Run:
    """Runs ``source``'s ``GO`` handler once per event data given; the last result."""
    vms: dict[tuple[str, int], object] = {}

    async def go(source: str, *datas: JsonValue, limits: Limits | None = None,
                 limiter: GcraLimiter | None = None,
                 capabilities: Mapping[str, CapabilityFactory] = CAPABILITIES,
                 ) -> HandlerResult:
        limits = limits or Limits()
        template = Template("t", {"init.lua": source}, ("GO",), version=1)
        template_set = TemplateSet(tenant, 1, (template,))
        vm = await build_vm(template_set, limits, _quiet, lua_thread)
        vms[source, len(vms)] = vm  # kept alive for the test
        runner = HandlerRunner(store, limits, _quiet_tenant, capabilities={
            **capabilities, "discord": lambda context: StoreWriter(store, tenant)})
        limiter = limiter or GcraLimiter({})
        results: list[HandlerResult] = []
        for data in datas or ({},):
            results = await runner.run_event(vm, template_set, Event("GO", data), limiter,
                                             lua_thread)
        (result,) = results
        return result

    return go


def _quiet(level: str, template: str, message: str) -> None:
    """Template output is not what these tests read."""


def _quiet_tenant(tenant: TenantId, level: str, template: str, message: str) -> None:
    """Failed handlers are read from their results."""


def _served(store: Store) -> int | None:
    points = store.kv.point_reads()
    return None if points is None else points.served


async def _put(store: Store, tenant: TenantId, key: str, value: JsonValue, *,
               scope: str = "default", expires_at: float | None = None,
               now: float | None = None) -> None:
    await store.kv.apply(tenant, [KVSet(scope, key, value, expires_at)],
                         now=time.time() if now is None else now)


# -- the fast path is taken on SQLite, and only there -------------------------------------
async def test_gets_of_committed_keys_are_read_on_the_lua_thread_on_sqlite(
        store: Store, tenant: TenantId, run: Run, dialect: str) -> None:
    for index in range(5):
        await _put(store, tenant, f"k{index}", {"n": index})
    before = _served(store)
    result = await run("""return {GO = function(ctx)
      local total = 0
      for i = 0, 4 do total = total + ctx.kv.get("k" .. i).n end
      return total
    end}""")
    assert result.ok, result.error
    assert result.value == 10
    record = await run('return {GO = function(ctx) return ctx.kv.record("k3").value end}')
    assert record.value == {"n": 3}
    if dialect == "sqlite":
        assert before is not None
        assert _served(store) == before + 6
    else:
        assert before is None  # PostgreSQL: every get is awaited
        assert _served(store) is None


async def test_a_get_of_the_runs_own_write_needs_no_read(
        store: Store, tenant: TenantId, run: Run) -> None:
    await _put(store, tenant, "k", "committed")
    before = _served(store)
    result = await run("""return {GO = function(ctx)
      ctx.kv.set("k", "mine")
      local mine = ctx.kv.get("k")
      ctx.kv.delete("k")
      return {mine, ctx.kv.get("k") == nil}
    end}""")
    assert result.value == ["mine", True]
    if before is not None:
        # One read on the Lua thread: the set loading its row. Both gets (and the delete)
        # are answered from the run's own writes.
        assert _served(store) == before + 1
    else:
        assert _served(store) is None


# -- committed data: each read sees every commit made before it ---------------------------
async def test_a_get_sees_what_the_previous_run_committed(store: Store, run: Run) -> None:
    result = await run("""return {GO = function(ctx, event)
      local seen = ctx.kv.get("count")
      ctx.kv.set("count", (seen or 0) + 1)
      return seen or json.null
    end}""", {}, {}, {})
    assert result.ok, result.error
    assert result.value == 2  # runs 1 and 2 committed; run 3 read 2


async def test_a_get_sees_a_commit_made_while_its_run_waited(store: Store, run: Run) -> None:
    # The Lua thread's connection read "k" (absent) first: no snapshot may outlive that read.
    result = await run("""return {GO = function(ctx)
      local before = ctx.kv.get("k")
      ctx.discord.put("k", "written meanwhile")
      return {before == nil, ctx.kv.get("k")}
    end}""")
    assert result.ok, result.error
    assert result.value == [True, "written meanwhile"]


async def test_an_expired_key_reads_as_nil(store: Store, tenant: TenantId, run: Run) -> None:
    now = time.time()
    await _put(store, tenant, "gone", 1, expires_at=now - 5, now=now - 10)
    await _put(store, tenant, "kept", 2, expires_at=now + 3600)
    result = await run("""return {GO = function(ctx)
      return {ctx.kv.get("gone") == nil, ctx.kv.get("kept"), ctx.kv.record("gone") == nil}
    end}""")
    assert result.value == [True, 2, True]


async def test_scopes_are_kept_apart(store: Store, tenant: TenantId, run: Run) -> None:
    await _put(store, tenant, "k", "in a", scope="a")
    await _put(store, tenant, "k", "in default")
    result = await run("""return {GO = function(ctx)
      return {ctx.kv.get("k"), ctx.kv.get("k", {scope = "a"}),
              ctx.kv.get("k", {scope = "b"}) == nil}
    end}""")
    assert result.value == ["in default", "in a", True]


# -- the same answers and errors as the awaited path --------------------------------------
HOSTILE_CALLS = [
    'ctx.kv.get("")',
    "ctx.kv.get()",
    "ctx.kv.get(42)",
    'ctx.kv.get(string.rep("k", 513))',
    'ctx.kv.get("a\\0b")',
    'ctx.kv.get("\\255\\254")',
    "ctx.kv.get({})",
    'ctx.kv.get(setmetatable({}, {__tostring = function() return "k" end, '
    '__index = function() error("ran") end, __len = function() error("ran") end}))',
    'ctx.kv.get(setmetatable({"k"}, {__index = function() error("ran") end}))',
    "ctx.kv.get(function() end)",
    "ctx.kv.get(coroutine.create(function() end))",
    '(function() local t = {} t.self = t return ctx.kv.get(t) end)()',
    '(function() local t = {} for i = 1, 200 do t = {t} end return ctx.kv.get(t) end)()',
    'ctx.kv.get("k", {scope = ""})',
    'ctx.kv.get("k", {scope = string.rep("s", 65)})',
    'ctx.kv.get("k", {scope = 1})',
    'ctx.kv.get("k", {other = 1})',
    'ctx.kv.get("k", "opts")',
    'ctx.kv.get("k", setmetatable({}, {__index = function() return "x" end}))',
    'ctx.kv.get(0/0)',
    'ctx.kv.get(math.huge)',
    'ctx.kv.get("k", nil, "extra")',
]


HOSTILE_CALLS += [call.replace("ctx.kv.get", "ctx.kv.record") for call in HOSTILE_CALLS[:8]]
HOSTILE_CALLS += ['ctx.kv.record("k")', 'ctx.kv.record("missing")']


@pytest.mark.parametrize("call", HOSTILE_CALLS)
async def test_hostile_arguments_meet_the_same_answer_on_both_paths(
        store: Store, tenant: TenantId, run: Run, call: str) -> None:
    await _put(store, tenant, "k", "value")
    source = f"""return {{GO = function(ctx)
      local ok, err = pcall(function() return {call} end)
      return {{ok, err == nil and json.null or err}}
    end}}"""
    now = await run(source)
    awaited = await run(source, capabilities=AWAITED)
    assert now.ok, now.error
    assert (now.value, now.error, now.limit) == (awaited.value, awaited.error, awaited.limit)
    assert "ran" not in str(now.value)  # no metamethod of the template ran


async def test_an_error_is_at_the_templates_line(store: Store, run: Run) -> None:
    result = await run("""return {GO = function(ctx)
      local x = 1
      ctx.kv.get("")
    end}""")
    assert not result.ok
    assert result.error == (
        "init.lua:3: ctx.kv.get: key must be a non-empty string, got an empty string")


async def test_values_read_back_as_they_were_stored(
        store: Store, tenant: TenantId, run: Run) -> None:
    value: JsonValue = {"empty": {}, "list": [], "null": None, "nested": [[1, 2.5], {"x": "é"}],
                        "big": 2**53, "t": True}
    await _put(store, tenant, "k", value)
    source = """return {GO = function(ctx)
      local v = ctx.kv.get("k")
      return {v, v.null == json.null, json.encode(v.empty), json.encode(v.list)}
    end}"""
    now = await run(source)
    awaited = await run(source, capabilities=AWAITED)
    assert now.ok, now.error
    assert now.value == awaited.value == [value, True, "{}", "[]"]


# -- limits --------------------------------------------------------------------------------
async def test_the_kv_rate_limit_holds(store: Store, run: Run) -> None:
    source = """return {GO = function(ctx)
      local done = 0
      local ok, err = pcall(function()
        for i = 1, 10 do ctx.kv.get("k" .. i) done = done + 1 end
      end)
      return {done, err}
    end}"""

    def limiter() -> GcraLimiter:  # a stopped clock: both paths name the same wait
        return GcraLimiter({"kv": Rate(burst=3, per_second=0.001)}, clock=lambda: 1000.0)

    now = await run(source, limiter=limiter())
    awaited = await run(source, limiter=limiter(), capabilities=AWAITED)
    assert now.value == awaited.value
    assert isinstance(now.value, list)
    done, error = now.value
    assert done == 3
    assert isinstance(error, str)
    assert error.startswith("init.lua:4: ctx.kv.get: rate limit for bucket kv exceeded")


async def test_a_refused_get_still_costs_its_token(store: Store, run: Run) -> None:
    # As on the awaited path: a call is charged before its arguments are checked.
    result = await run("""return {GO = function(ctx)
      pcall(ctx.kv.get, "")
      pcall(ctx.kv.get, "")
      local ok, err = pcall(ctx.kv.get, "k")
      return err
    end}""", limiter=GcraLimiter({"kv": Rate(burst=2, per_second=0.001)}))
    assert isinstance(result.value, str)
    assert "rate" in result.value


async def test_a_value_too_large_for_the_vm_breaks_its_memory_limit(
        store: Store, tenant: TenantId, run: Run) -> None:
    await _put(store, tenant, "huge", "x" * (3 * 1024 * 1024))
    source = """return {GO = function(ctx)
      local ok, err = pcall(ctx.kv.get, "huge")
      return "caught"
    end}"""
    limits = Limits(memory_bytes=2 * 1024 * 1024)
    now = await run(source, limits=limits)
    awaited = await run(source, limits=limits, capabilities=AWAITED)
    assert (now.ok, now.limit, now.error) == (awaited.ok, awaited.limit, awaited.error)
    assert not now.ok
    assert now.limit == "memory"
    assert now.error == "init.lua:2: memory limit exceeded"


async def test_values_that_fill_the_vm_break_its_memory_limit(
        store: Store, tenant: TenantId, run: Run) -> None:
    await _put(store, tenant, "big", "y" * (200 * 1024))
    result = await run("""return {GO = function(ctx)
      local kept = {}
      for i = 1, 100 do kept[i] = ctx.kv.get("big") .. i end
      return #kept
    end}""", limits=Limits(memory_bytes=4 * 1024 * 1024))
    assert not result.ok
    assert result.limit == "memory"


async def test_the_cpu_limit_covers_gets_answered_on_the_thread(
        store: Store, tenant: TenantId, run: Run) -> None:
    await _put(store, tenant, "k", 1)
    result = await run("""return {GO = function(ctx)
      while true do pcall(ctx.kv.get, "k") end
    end}""", limits=Limits(cpu_seconds=0.3))
    assert not result.ok
    assert result.limit == "cpu"


async def test_gets_fall_back_to_the_awaited_path_when_the_thread_cannot_read(
        store: Store, tenant: TenantId, run: Run, dialect: str) -> None:
    points = store.kv.point_reads()
    if dialect != "sqlite":
        assert points is None
        return
    assert points is not None
    await _put(store, tenant, "k", "still read")
    points.close()  # what a store being closed leaves: the awaited reader still answers
    before = points.served
    result = await run('return {GO = function(ctx) return ctx.kv.get("k") end}')
    assert result.value == "still read"
    assert points.served == before


async def test_a_get_inside_a_templates_own_coroutine(
        store: Store, tenant: TenantId, run: Run) -> None:
    await _put(store, tenant, "k", "v")
    result = await run("""return {GO = function(ctx)
      local co = coroutine.wrap(function() coroutine.yield(ctx.kv.get("k")) return 2 end)
      return {co(), co()}
    end}""")
    assert result.value == ["v", 2]


# -- writes answered on the Lua thread (set, delete, incr, expire) -------------------------
async def _stored(store: Store, tenant: TenantId) -> list[tuple[str, str, JsonValue, int, bool]]:
    """Every live key of the tenant in the scopes these tests use, with its version."""
    now = time.time()
    rows = []
    for scope in ("default", "other"):
        for record in await store.kv.find(tenant, scope, "", after=None, limit=1000, now=now):
            rows.append((scope, record.key, record.value, record.version,
                         record.expires_at is not None))
    return rows


async def _seed(store: Store, tenant: TenantId) -> None:
    now = time.time()
    existing = await _stored(store, tenant)
    await store.kv.apply(tenant, [KVDelete(scope, key) for scope, key, *_ in existing], now=now)
    await store.kv.apply(tenant, [KVSet("default", "n", 5), KVSet("default", "s", "text"),
                                  KVSet("other", "n", 1.5)], now=now)


WRITE_BODIES = [
    'return ctx.kv.set("k", {a = {1, 2}, b = json.null})',
    'ctx.kv.set("k", 1) return ctx.kv.set("k", 2)',
    'return ctx.kv.set("k", "v", {ttl = 60})',
    'return ctx.kv.set("k", "v", {expires_at = os.time() + 60, resume = true})',
    'return ctx.kv.set("k", "v", {ttl = 60, expires_at = 1})',
    'return ctx.kv.set("k", "v", {ttl = -1})',
    'return ctx.kv.set("k", "v", {resume = "yes"})',
    'return ctx.kv.set("k", print)',
    'return ctx.kv.set("k", string.rep("x", 300 * 1024))',
    'return ctx.kv.set("", 1)',
    'return ctx.kv.set(setmetatable({}, {__index = function() error("ran") end}), 1)',
    'return ctx.kv.set("k", 1, {scope = "other"})',
    'return ctx.kv.set("k", 1, {scope = 7})',
    'return ctx.kv.incr("n")',
    'return ctx.kv.incr("n", 2.5)',
    'return ctx.kv.incr("fresh", -3)',
    'return ctx.kv.incr("s")',
    'return ctx.kv.incr("n", "1")',
    'return ctx.kv.incr("n", 1, {scope = "other"})',
    'return ctx.kv.delete("n")',
    'return ctx.kv.delete("missing")',
    'ctx.kv.delete("n") return ctx.kv.incr("n")',
    'return ctx.kv.expire("n", 30)',
    'return ctx.kv.expire("missing", 30)',
    'return ctx.kv.expire("n", 0)',
    'ctx.kv.expire("n", 30) return ctx.kv.expire("n")',
    'ctx.kv.set("a", 1) ctx.kv.incr("a") ctx.kv.delete("s") return ctx.kv.get("a")',
    'ctx.kv.set("k", 1) error("after the write")',
]


@pytest.mark.parametrize("body", WRITE_BODIES)
async def test_writes_meet_the_same_answer_and_store_the_same_on_both_paths(
        store: Store, tenant: TenantId, run: Run, body: str) -> None:
    source = f"""return {{GO = function(ctx)
      local ok, result = pcall(function() {body} end)
      if not ok and result == "after the write" then error(result, 0) end
      return {{ok, result == nil and json.null or result}}
    end}}"""
    await _seed(store, tenant)
    now = await run(source)
    stored_now = await _stored(store, tenant)
    await _seed(store, tenant)
    awaited = await run(source, capabilities=AWAITED)
    stored_awaited = await _stored(store, tenant)
    assert (now.ok, now.error, now.limit) == (awaited.ok, awaited.error, awaited.limit)
    assert _without_times(now.value) == _without_times(awaited.value)
    # Versions count from the seed's, so the same writes give the same versions.
    assert [row[:3] + row[4:] for row in stored_now] == [
        row[:3] + row[4:] for row in stored_awaited]
    assert "ran" not in str(now.value)


def _without_times(value: JsonValue) -> JsonValue:
    """A write's answer with its timestamps left out (the two runs happen apart)."""
    if isinstance(value, dict):
        return {key: _without_times(item) for key, item in value.items()
                if key not in {"created_at", "updated_at", "expires_at"}}
    if isinstance(value, list):
        return [_without_times(item) for item in value]
    return value


async def test_writes_are_answered_on_the_lua_thread_on_sqlite(
        store: Store, tenant: TenantId, run: Run, dialect: str) -> None:
    await _seed(store, tenant)
    before = _served(store)
    result = await run("""return {GO = function(ctx)
      ctx.kv.set("a", 1) ctx.kv.incr("a") ctx.kv.incr("n") ctx.kv.delete("s")
      return ctx.kv.expire("n", 60).value
    end}""")
    assert result.ok, result.error
    assert result.value == 6
    if dialect == "sqlite":
        assert before is not None
        assert _served(store) == before + 3  # one row read each for a, n, s; the rest cached
    else:
        assert _served(store) is None


async def test_the_key_limit_holds_for_writes_on_the_lua_thread(
        store: Store, tenant: TenantId, run: Run) -> None:
    source = """return {GO = function(ctx)
      local ok, err = pcall(ctx.kv.set, "new", 1)
      ctx.kv.delete("s")
      return {ok, err or json.null, ctx.kv.set("new", 2).value}
    end}"""
    limits = Limits(keys_per_tenant=3)
    await _seed(store, tenant)
    now = await run(source, limits=limits)
    await _seed(store, tenant)
    awaited = await run(source, limits=limits, capabilities=AWAITED)
    assert now.ok, now.error
    assert now.value == awaited.value
    assert isinstance(now.value, list)
    assert now.value[0] is False
    assert now.value[2] == 2


async def test_the_rate_limit_holds_for_writes_on_the_lua_thread(store: Store, run: Run) -> None:
    source = """return {GO = function(ctx)
      local done = 0
      local ok, err = pcall(function()
        for i = 1, 10 do ctx.kv.set("k" .. i, i) done = done + 1 end
      end)
      return {done, err}
    end}"""

    def limiter() -> GcraLimiter:
        return GcraLimiter({"kv": Rate(burst=3, per_second=0.001)}, clock=lambda: 1000.0)

    now = await run(source, limiter=limiter())
    awaited = await run(source, limiter=limiter(), capabilities=AWAITED)
    assert now.value == awaited.value
    assert isinstance(now.value, list)
    assert now.value[0] == 3
