"""Hostile templates against a whole engine, on both topologies: running out of memory while
the host converts a value breaks that tenant's run, never its worker or its neighbours."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moonshard import Engine, Event, TenantId
from moonshard.limits import Limits

# guild:1 and guild:2 share worker 0 of two ((id >> 22) % 2 == 0).
HOG, NEIGHBOUR = TenantId.guild(1), TenantId.guild(2)

HOG_TEMPLATE = """
return {
  FILL = function(ctx, event)
    for i = 1, 30 do ctx.kv.set("big:" .. i, string.rep(tostring(i % 10), 200000)) end
    return "filled"
  end,
  FIND = function(ctx)
    held = string.rep("h", 3 * 1024 * 1024)  -- 3 MiB held, then 6 MiB of answers
    local ok = pcall(ctx.kv.find, "big:")
    return ok and "found" or "caught"
  end,
  DECODE = function()
    local ok = pcall(json.decode, "[" .. string.rep("1,", 1500000) .. "1]")
    return "caught"
  end,
  EMIT = function(ctx)
    local s = string.rep("x", 1024 * 1024)
    local many = {}
    for i = 1, 16 do many[i] = s end
    local ok, err = pcall(ctx.events.emit, "E", many)
    return err
  end,
  PING = function() return "pong" end,
}
"""


@pytest.fixture(params=["thread", "process"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    limits = Limits(memory_bytes=8 * 1024 * 1024, cpu_seconds=5)
    async with Engine.open(f"sqlite:///{tmp_path / 'hostile.db'}", topology=request.param,
                           workers=2, limits=limits) as running:
        yield running


async def test_out_of_memory_in_a_host_answer_breaks_only_that_run(engine: Engine) -> None:
    for tenant in (HOG, NEIGHBOUR):
        await engine.templates.put(tenant, "hog", {"init.lua": HOG_TEMPLATE})
    assert (await engine.dispatch(HOG, Event("FILL")))[0].value == "filled"
    found = (await engine.dispatch(HOG, Event("FIND")))[0]
    assert not found.ok
    assert found.error is not None
    assert found.error.endswith("memory limit exceeded")
    # The worker lives on: its other tenant answers, and so does the hog, on a new VM.
    assert (await engine.dispatch(NEIGHBOUR, Event("PING")))[0].value == "pong"
    assert (await engine.dispatch(HOG, Event("PING")))[0].value == "pong"


async def test_out_of_memory_in_json_decode_cannot_be_caught(engine: Engine) -> None:
    for tenant in (HOG, NEIGHBOUR):
        await engine.templates.put(tenant, "hog", {"init.lua": HOG_TEMPLATE})
    decoded = (await engine.dispatch(HOG, Event("DECODE")))[0]
    assert not decoded.ok
    assert decoded.error is not None
    assert decoded.error.endswith("memory limit exceeded")
    assert (await engine.dispatch(NEIGHBOUR, Event("PING")))[0].value == "pong"


async def test_shared_references_are_refused_before_they_are_copied(engine: Engine) -> None:
    await engine.templates.put(HOG, "hog", {"init.lua": HOG_TEMPLATE})
    emitted = (await engine.dispatch(HOG, Event("EMIT")))[0]
    assert emitted.ok, emitted.error
    assert isinstance(emitted.value, str)
    assert "value too large" in emitted.value
    assert (await engine.dispatch(HOG, Event("PING")))[0].value == "pong"


async def test_every_escape_probe_holds_through_the_engine(engine: Engine) -> None:
    from tests.test_sandbox_hostile import ESCAPES

    handlers = ",\n".join(f"P{index} = function(ctx, event)\n{body}\nend"
                          for index, body in enumerate(ESCAPES.values()))
    await engine.templates.put(HOG, "probes", {"init.lua": f"return {{\n{handlers}\n}}"})
    for index, name in enumerate(ESCAPES):
        result = (await engine.dispatch(HOG, Event(f"P{index}")))[0]
        assert result.value is not True, f"{name} escaped"


async def test_error_values_are_plain_strings_everywhere(engine: Engine) -> None:
    await engine.templates.put(HOG, "errors", {"init.lua": """
        return {RUN = function(ctx)
          local kinds = {}
          local attempts = {
            function() return json.decode("{") end,
            function() return json.decode('"\\\\ud800"') end,
            function() return json.encode(print) end,
            function() return ctx.kv.set(string.rep("k", 1000), 1) end,
            function() return ctx.kv.get({}) end,
            function() return ctx.events.emit("E", print) end,
            function() return ctx.discord.nothing{} end,
            function() return string.rep("x", -1, {}) end,
            function() return print(setmetatable({}, {__tostring = function() return {} end})) end,
          }
          for i, attempt in ipairs(attempts) do
            local ok, err = pcall(attempt)
            kinds[i] = ok and "ok" or type(err)
          end
          return kinds
        end}"""})
    result = (await engine.dispatch(HOG, Event("RUN")))[0]
    assert result.ok, result.error
    assert isinstance(result.value, list)
    assert set(result.value) == {"string"}, result.value


async def test_emitted_and_scheduled_data_has_the_value_limit(engine: Engine) -> None:
    await engine.templates.put(HOG, "big", {"init.lua": """
        return {RUN = function(ctx)
          local big = {text = string.rep("x", 300 * 1024)}
          local ok1, err1 = pcall(ctx.events.emit, "E", big)
          local ok2, err2 = pcall(ctx.events.schedule, "E", big, {delay = 60})
          local ok3 = ctx.events.emit("E", {text = string.rep("x", 1000)})
          return {ok1, err1, ok2, err2, ok3}
        end, E = function() return "ran" end}"""})
    result = (await engine.dispatch(HOG, Event("RUN")))[0]
    assert result.ok, result.error
    assert isinstance(result.value, list)
    assert result.value[0] is False
    assert result.value[2] is False
    for error in (result.value[1], result.value[3]):
        assert "event data is" in error
        assert "the limit is 262144" in error
    assert result.value[4] is True
