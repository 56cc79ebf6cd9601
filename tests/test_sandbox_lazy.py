"""The lazily built parts of a VM: string, table and json are made the first time a template
touches them, and library sources are fetched on first require. Laziness must not show: every
template sees the same libraries whatever another did first, and no new route opens."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.sandbox import TenantVM, drive, run_inline
from moonshard.sandbox.loading import build_vm
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId
from tests.conftest import Harness

_T = TypeVar("_T")

STRING_NAMES = ["byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match",
                "pack", "packsize", "rep", "reverse", "sub", "unpack", "upper"]


async def test_a_template_replacing_a_library_before_its_first_touch_changes_only_its_own_view(
        harness: Harness) -> None:
    await harness.load("""
        string = {upper = function() return "fake" end}
        table, json = false, 1
        return {RUN = function() return {string.upper("x"), ("x"):upper(), table, json} end}
    """, name="a")
    await harness.load("""
        return {RUN = function()
          return {string.upper("x"), ("y"):upper(), table.concat({1, 2}, ","),
                  json.encode({a = 1})}
        end}
    """, name="b")
    first = await harness.run("RUN", name="a")
    second = await harness.run("RUN", name="b")
    assert first.ok, first.error
    assert first.value == ["fake", "X", False, 1]
    assert second.ok, second.error
    assert second.value == ["X", "Y", "1,2", '{"a":1}']


async def test_a_string_method_before_string_is_touched_builds_the_same_library(
        harness: Harness) -> None:
    value = await harness.value("""
        local upper = ("abc"):upper()
        return {upper, ("").upper == string.upper, ("").find == string.find}
    """)
    assert value == ["ABC", True, True]


async def test_the_template_globals_are_the_same_before_and_after_a_first_touch(
        harness: Harness) -> None:
    value = await harness.value("""
        local function names()
          local out = {}
          for key in pairs(_G) do out[#out + 1] = key end
          table.sort(out)
          return table.concat(out, " ")
        end
        local raw_before = rawget(_ENV, "json")
        local before = names()   -- touches table (for sort) but not json or string
        local _ = json.null, string.len
        return {before, names(), raw_before == nil, rawget(_ENV, "json") == nil,
                rawget(_G, "string") == nil, getmetatable(_G)}
    """)
    assert value == ["_G load print require", "_G load print require", True, True, True, False]


async def test_a_lazily_built_library_lists_and_guards_as_before(harness: Harness) -> None:
    value = await harness.value("""
        local names = {}
        for key in pairs(string) do names[#names + 1] = key end
        table.sort(names)
        local json_names = {}
        for key in pairs(json) do json_names[#json_names + 1] = key end
        table.sort(json_names)
        local changed = pcall(function() string.upper = nil end)
        local raw = pcall(rawset, table, "x", 1)
        return {names, json_names, changed, raw, getmetatable(string), getmetatable("")}
    """)
    assert value == [STRING_NAMES, ["array", "decode", "encode", "null", "object"], False,
                     False, False, False]


async def test_require_of_the_json_library_gives_the_json_global(harness: Harness) -> None:
    value = await harness.value("""
        local first = require("@moonshard/json")
        return {first == json, first.encode({1}), require("@moonshard/json") == first}
    """)
    assert value == [True, "[1]", True]


async def test_the_pattern_guard_holds_in_a_string_library_built_by_a_method_call(
        harness: Harness) -> None:
    error = await harness.error("""
        local s = "a"
        for _ = 1, 18 do s = s .. s end   -- no string function: the method call comes first
        return s:find("a+b")
    """)
    assert "too costly for a subject of 262144 bytes" in error


_FILL_THEN_TOUCH = """
    {touch_at_load}
    return {{COUNT = function() return collectgarbage("count") * 1024 end,
            RUN = function(ctx, event)
      -- Fill the heap to a few KiB under the limit (constant-size tables: no big realloc).
      local hog = nil
      while collectgarbage("count") * 1024 < event.data.fill_to do
        hog = {{hog, 1, 2, 3, 4, 5, 6}}
      end
      local ok = pcall(function() return string.upper end)
      return ok
    end}}"""


@pytest.mark.parametrize("built_at_load", [False, True])
async def test_a_first_touch_that_breaks_the_memory_limit_is_not_swallowed_by_pcall(
        built_at_load: bool) -> None:
    limit = 1024 * 1024
    harness = Harness(limits=Limits(cpu_seconds=2.0, memory_bytes=limit))
    touch = "local _ = string.upper" if built_at_load else ""
    await harness.load(_FILL_THEN_TOUCH.format(touch_at_load=touch))
    assert harness.vm is not None
    # lupa's limit leaves out the state's own base memory; Lua's count does not.
    counted = await harness.run("COUNT")
    assert isinstance(counted.value, float)
    base = counted.value - harness.vm.memory_used
    harness.vm.collect_garbage()  # the fill counts live memory only: no garbage to free later
    result = await harness.run("RUN", {"fill_to": limit + base - 3072})
    if built_at_load:
        # The same run with the part already built fits: the limit above broke in the build.
        assert result.ok, result.error
        assert result.value is True
        assert harness.vm.broken is None
    else:
        assert not result.ok
        assert result.limit == "memory"
        assert harness.vm.broken == "memory"


async def test_a_library_source_is_fetched_once_per_template(harness: Harness) -> None:
    value = await harness.value("""
        local a = require("@moonshard/duration")
        local b = require("@moonshard/duration")
        local ok, err = pcall(require, "@moonshard/no-such-library")
        return {a == b, ok, (tostring(err):find("no built-in library", 1, true)) ~= nil}
    """)
    assert value == [True, False, True]


def _counter_set(tenant: TenantId, *names: str) -> TemplateSet:
    source = "local n = 0\nreturn {TICK = function() n = n + 1 return n end}"
    return TemplateSet(tenant, 1, tuple(
        Template(name, {"init.lua": source}, ("TICK",)) for name in names))


def _quiet(level: str, template: str, message: str) -> None:
    pass


async def test_a_vm_is_built_entirely_by_the_step_runner() -> None:
    threads: list[int] = []

    async def on_another_thread(step: Callable[[], _T]) -> _T:
        def run() -> _T:
            threads.append(threading.get_ident())
            return step()
        return await asyncio.to_thread(run)

    tenant = TenantId.guild(8)
    vm = await build_vm(_counter_set(tenant, "a", "b"), Limits(), _quiet, on_another_thread)
    # One step per template: the VM is made in the first template's step.
    assert len(threads) == 2
    assert threading.get_ident() not in threads
    run = vm.start_handler("b", 1, Event("TICK", {}))
    assert run is not None
    result = await drive(run, {}, run_inline)
    assert result.ok
    assert result.value == 1

    threads.clear()
    await build_vm(_counter_set(tenant), Limits(), _quiet, on_another_thread)
    assert len(threads) == 1  # no template: the VM is still made on the runner


async def test_a_vm_build_runs_no_lua_when_the_step_runner_refuses() -> None:
    async def refuse(step: Callable[[], _T]) -> _T:
        raise RuntimeError("no Lua here")

    logs: list[tuple[str, str, str]] = []
    with pytest.raises(RuntimeError, match="no Lua here"):
        await build_vm(_counter_set(TenantId.guild(9), "a"), Limits(),
                       lambda *line: logs.append(line), refuse)
    assert logs == []  # not blamed on the template: no VM could be made


async def test_a_built_vm_holds_no_compile_garbage() -> None:
    vm = await build_vm(_counter_set(TenantId.guild(10), "a", "b"), Limits(), _quiet,
                        run_inline)
    held = vm.memory_used
    vm.collect_garbage()
    assert held - vm.memory_used < 1024


def test_a_fresh_vm_has_not_built_its_library_parts() -> None:
    vm = TenantVM(TenantId.guild(11), Limits(), _quiet)
    vm.collect_garbage()
    fresh = vm.memory_used
    asyncio.run(_touch_all(vm))
    vm.collect_garbage()
    assert vm.memory_used - fresh > 16 * 1024


async def _touch_all(vm: TenantVM) -> None:
    from moonshard.sandbox.loading import load_template
    await load_template(vm, "t", {"init.lua": "local _ = string.len, table.concat, json.encode "
                                              "return {}"}, run_inline)
