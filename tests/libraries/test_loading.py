"""How built-in libraries load: once per template per VM, in a world no larger than a template's."""

from __future__ import annotations

from moonshard.sandbox.libraries import BUILTIN_LIBRARY_SOURCES
from tests.conftest import Harness


def test_the_package_ships_the_libraries() -> None:
    assert set(BUILTIN_LIBRARY_SOURCES) == {"commands", "duration", "embed"}


async def test_an_unknown_library_is_named_in_the_error(harness: Harness) -> None:
    error = await harness.error('local lib = require("@moonshard/nope")')
    assert error == "init.lua:2: no built-in library '@moonshard/nope'"


async def test_one_template_gets_the_same_table_from_every_file(harness: Harness) -> None:
    await harness.load(
        'local a = require("@moonshard/duration")\n'
        'local b = require("helper")\n'
        "return {RUN = function() return a == b and a == require('@moonshard/duration') end}",
        files={"helper.lua": 'return require("@moonshard/duration")'})
    result = await harness.run("RUN")
    assert result.value is True


async def test_templates_of_one_tenant_cannot_change_each_others_library(
        harness: Harness) -> None:
    await harness.load("""
        local duration = require("@moonshard/duration")
        duration.parse = function() return "hijacked" end
        require("@moonshard/embed").LIMITS.title = 100000
        return {RUN = function() return duration.parse("1m") end}
    """, name="vandal")
    await harness.load("""
        local duration = require("@moonshard/duration")
        local embed = require("@moonshard/embed")
        return {RUN = function()
          local ok = pcall(function() embed.new():title(("x"):rep(300)) end)
          return {duration.parse("1m"), ok}
        end}
    """, name="victim")
    assert (await harness.run("RUN", name="vandal")).value == "hijacked"
    assert (await harness.run("RUN", name="victim")).value == [60, False]


async def test_a_templates_globals_do_not_reach_into_a_library(harness: Harness) -> None:
    value = await harness.value("""
        tostring = function() error("the template's tostring ran") end
        string = nil
        math = {floor = function() return 0 end}
        return require("@moonshard/duration").format(3600)
    """)
    assert value == "1h"


async def test_library_functions_run_under_the_templates_limits(harness: Harness) -> None:
    await harness.load("""
        local embed = require("@moonshard/embed")
        return {RUN = function()
          local text = ("é"):rep(1000)
          while true do embed.truncate(text, 500) end
        end}
    """)
    result = await harness.run("RUN")
    assert not result.ok
    assert result.limit == "cpu"
