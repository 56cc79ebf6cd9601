"""The hostile battery: each probe is first shown to escape an unrestricted lupa runtime, then
shown to hold in ours.

A probe is a Lua function body that returns true when the escape worked. Run unrestricted
(``lupa.lua54.LuaRuntime()``, the library's defaults) it must return true — otherwise it
proves nothing. Run as a handler in a moonshard VM it must either fail or return something
other than true.
"""

from __future__ import annotations

import pytest
from lupa import lua54

from moonshard.limits import Limits
from tests.conftest import Harness

ESCAPES = {
    # Library poisoning: the "read-only" tables must not hand out their contents.
    "string via pairs": """
        local real = select(2, pairs(string))
        real.upper = function() return "pwned" end
        return ("x"):upper() == "pwned" """,
    "table via pairs": """
        local real = select(2, pairs(table))
        real.concat = function() return "pwned" end
        return table.concat({}) == "pwned" """,
    "math via pairs": """
        local real = select(2, pairs(math))
        real.floor = function() return 42 end
        return math.floor(1.5) == 42""",
    "os via pairs": """
        local real = select(2, pairs(os))
        real.time = function() return 0 end
        return os.time() == 0""",
    "utf8 via pairs": """
        local real = select(2, pairs(utf8))
        real.char = function() return "pwned" end
        return utf8.char(65) == "pwned" """,
    "coroutine via pairs": """
        local real = select(2, pairs(coroutine))
        real.running = function() return "pwned" end
        return coroutine.running() == "pwned" """,
    "string via next": """
        local key = next(string)
        return key ~= nil and rawget(string, key) ~= nil""",
    "string via rawset": """
        rawset(string, "upper", function() return "pwned" end)
        return ("x"):upper() == "pwned" """,
    "string metatable __index": """
        getmetatable("").__index = {upper = function() return "pwned" end}
        return ("x"):upper() == "pwned" """,
    "string metatable replaced": """
        local mt = getmetatable("")
        mt.__index = function() return function() return "pwned" end end
        return ("x"):upper() == "pwned" """,
    # Finalizers run outside every handler, with no hook: unlimited CPU.
    "__gc by setmetatable": """
        setmetatable({}, {__gc = function() end})
        return true""",
    "__gc on a library-made metatable": """
        local made = json and json.object({}) or setmetatable({}, {})
        local mt = getmetatable(made)
        if type(mt) ~= "table" then return false end
        mt.__gc = function() end
        setmetatable({}, mt)
        return true""",
    "collectgarbage stop": "collectgarbage('stop') return true",
    "collectgarbage step": "collectgarbage('step') return true",
    # Routes to the host machine or Python.
    "python global": "return python ~= nil",
    "python.eval": "return python.eval('1') == 1",
    "os.execute": "return os.execute ~= nil",
    "os.getenv": "return os.getenv('PATH') ~= nil",
    "io.open": "return io.open ~= nil",
    "debug.sethook clears the limit": "debug.sethook() return true",
    "debug.getregistry": "return type(debug.getregistry()) == 'table'",
    "debug.getupvalue": "return debug.getupvalue ~= nil",
    "package.loadlib": "return package.loadlib ~= nil",
    "require a standard module": "return (pcall(require, 'io'))",
    "load bytecode": "return load(string.dump(function() return 1 end)) ~= nil",
    "load a binary chunk": "return load(string.dump(load('return 1')), 'x', 'b')() == 1",
    "dofile": "return dofile ~= nil",
    "loadfile": "return loadfile ~= nil",
    "string.dump": "return string.dump ~= nil",
    "globals through load": "return load('return _G')() ~= nil and load('return io')() ~= nil",
}


def escapes_unrestricted(body: str) -> bool:
    runtime = lua54.LuaRuntime()
    result = runtime.execute(f"return (function()\n{body}\nend)()")
    return result is True


@pytest.mark.parametrize("body", ESCAPES.values(), ids=ESCAPES.keys())
async def test_probe_escapes_unrestricted_but_holds_here(harness: Harness, body: str) -> None:
    assert escapes_unrestricted(body), "the probe proves nothing: it fails unrestricted too"
    await harness.load(f"return {{RUN = function(ctx, event)\n{body}\nend}}")
    result = await harness.run("RUN")
    assert result.value is not True, "escaped"


async def test_library_poisoning_does_not_cross_templates(harness: Harness) -> None:
    await harness.load("""return {POISON = function()
        for _, lib in ipairs({string, table, math, os, utf8, coroutine, json}) do
          pcall(function() local real = select(2, pairs(lib)); for k in pairs(real) do
            real[k] = function() return "pwned" end end end)
          pcall(function() for k in next, lib do rawset(lib, k, 1) end end)
        end
        return "tried" end}""", name="a")
    await harness.load("""return {LOOK = function(ctx)
        return {("x"):upper(), table.concat({"a", "b"}), math.floor(1.5), utf8.char(65),
                json.encode({1}), type(ctx.kv.get), type(coroutine.wrap)}
        end}""", name="b")
    assert (await harness.run("POISON", name="a")).value == "tried"
    looked = await harness.run("LOOK", name="b")
    assert looked.value == ["X", "ab", 1, "A", "[1]", "function", "function"]


# -- forged host requests ---------------------------------------------------------------------

FORGERIES = {
    "__eq that says yes": """
        local liar = setmetatable({}, {__eq = function() return true end})
        coroutine.yield(liar, "kv", "set", {n = 2, "k", 1})""",
    "__eq inside a user coroutine": """
        local liar = setmetatable({}, {__eq = function() return true end})
        local co = coroutine.create(function() coroutine.yield(liar, "kv", "set", {n = 1}) end)
        coroutine.resume(co)
        coroutine.yield(liar, "kv", "set", {n = 1})""",
    "malformed arguments": """coroutine.yield({}, "kv", "set", "not a table")""",
    "nothing at all": "coroutine.yield()",
}


@pytest.mark.parametrize("body", FORGERIES.values(), ids=FORGERIES.keys())
async def test_host_requests_cannot_be_forged(harness: Harness, body: str) -> None:
    from tests.conftest import RecordingCapability

    host = RecordingCapability()
    await harness.load(f"return {{RUN = function(ctx, event)\n{body}\nend}}")
    result = await harness.run("RUN", capabilities={"kv": host})
    assert host.calls == []
    assert not result.ok
    assert result.error is not None
    assert "a handler cannot yield" in result.error


# -- template code never runs outside its run ------------------------------------------------

TRAPS = """
local trap_mt = {}
for _, name in ipairs({"__index", "__newindex", "__pairs", "__len", "__eq", "__lt", "__le",
                       "__tostring", "__name", "__concat", "__call", "__close", "__mode"}) do
  trap_mt[name] = function() while true do end end
end
trap_mt.__mode = nil
trap_mt.__name = nil
local function trapped(t) return setmetatable(t, trap_mt) end
"""


async def test_metamethods_do_not_run_when_a_return_value_crosses(harness: Harness) -> None:
    await harness.load(TRAPS + """return {RUN = function()
        return trapped({a = trapped({1, 2}), b = trapped({}), c = json.null})
    end}""")
    result = await harness.run("RUN")
    assert result.ok, result.error
    assert result.value == {"a": [1, 2], "b": [], "c": None}


async def test_metamethods_do_not_run_when_host_arguments_cross(harness: Harness) -> None:
    from tests.conftest import RecordingCapability

    host = RecordingCapability(answer="ok")
    await harness.load(TRAPS + """return {RUN = function(ctx)
        return ctx.kv.set(trapped({}), trapped({x = trapped({1})}), trapped({scope = "s"}))
    end}""")
    result = await harness.run("RUN", capabilities={"kv": host})
    assert result.ok, result.error
    assert host.calls == [("set", [[], {"x": [1]}, {"scope": "s"}])]


async def test_metamethods_do_not_run_in_json_encode(harness: Harness) -> None:
    value = await harness.value(TRAPS + "return json.encode(trapped({k = trapped({true})}))")
    assert value == '{"k":[true]}'


async def test_shared_children_are_cheap_and_cycles_are_named(harness: Harness) -> None:
    # A 120-deep chain where each level points twice at the next: 2^120 paths.
    value = await harness.value("""
        local node = {}
        for _ = 1, 120 do node = {node, node} end
        local ok, err = pcall(json.encode, node)
        local t = {} t.self = t
        local ok2, err2 = pcall(json.encode, t)
        return {ok, err, ok2, err2}""")
    assert isinstance(value, list)
    assert value[0] is False
    assert "nest deeper than 100" in value[1]
    assert value[2] is False
    assert "contains a cycle" in value[3]
    wide = await harness.error("""
        local node = {"x"}
        for _ = 1, 60 do node = {node, node} end
        return node""")
    assert "value too large" in wide or "nest deeper" in wide


# -- C loops where no hook fires --------------------------------------------------------------

C_LOOPS = {
    "rep of nothing": ("return #string.rep('', math.maxinteger)", 0),
    "rep of nothing with a separator": ("return #string.rep('', math.maxinteger, '')", 0),
    "rep as a method": ("return #(''):rep(math.maxinteger)", 0),
}


@pytest.mark.parametrize(("body", "expected"), C_LOOPS.values(), ids=C_LOOPS.keys())
async def test_empty_repetitions_return_at_once(
    harness: Harness, body: str, expected: object,
) -> None:
    assert await harness.value(body) == expected


C_HOGS = {
    "table.move of nils": "table.move({}, 1, math.maxinteger - 1, 2)",
    "table.move of a huge range": "table.move({}, -math.maxinteger + 2, 0, 1)",
    "table.insert with a huge __len": """
        local t = setmetatable({}, {__len = function() return math.maxinteger - 1 end})
        table.insert(t, 1, "x")""",
    "table.remove with a huge __len": """
        local t = setmetatable({}, {__len = function() return math.maxinteger - 1 end})
        table.remove(t, 1)""",
    "plain find of 1 MiB in 2 MiB": """
        local hay = string.rep("a", 2 * 1024 * 1024)
        local needle = string.rep("a", 1024 * 1024 - 1) .. "b"
        local found = hay:find(needle, 1, true)
        return found""",
    "find of a literal pattern": """
        local hay = string.rep("a", 2 * 1024 * 1024)
        local found = hay:find(string.rep("a", 1024 * 1024 - 1) .. "b")
        return found""",
    "rep of a long piece": "return #string.rep(string.rep('x', 1024), 2^40)",
}


@pytest.mark.parametrize("body", C_HOGS.values(), ids=C_HOGS.keys())
async def test_c_loops_are_charged_before_they_run(body: str) -> None:
    harness = Harness(limits=Limits(cpu_seconds=0.2))
    error = await harness.error(body)
    assert error.endswith(("cpu time limit exceeded", "memory limit exceeded",
                           "resulting string too large")), error
    assert "init.lua:" in error or "too large" in error, error


async def test_quadratic_patterns_are_refused(harness: Harness) -> None:
    error = await harness.error('return string.rep("a", 200000):find("a+b")')
    assert "too costly for a subject of 200000 bytes" in error
    long_literal = await harness.error(
        'return string.rep("a", 2^21):find(string.rep("a", 2^20) .. ".")')
    assert "too costly" in long_literal or "cpu time limit exceeded" in long_literal


async def test_big_load_is_refused(harness: Harness) -> None:
    value = await harness.value(
        "local f, err = load(string.rep(' ', 2 * 1024 * 1024)) return {f == nil, err}")
    assert value == [True, "load: the text is larger than 1048576 bytes"]


# -- memory: out of memory anywhere is the memory limit, for that run only ---------------------

async def test_host_answers_too_big_for_the_vm_break_the_memory_limit() -> None:
    from tests.conftest import RecordingCapability

    harness = Harness(limits=Limits(memory_bytes=8 * 1024 * 1024, cpu_seconds=2))
    big = [{"key": f"k{i}", "value": "v" * 200_000} for i in range(100)]
    host = RecordingCapability(answer=big)
    await harness.load("""return {RUN = function(ctx)
        local ok = pcall(ctx.kv.find, "k")
        return "caught"
    end}""")
    result = await harness.run("RUN", capabilities={"kv": host})
    assert not result.ok
    assert result.error is not None
    assert result.error.endswith("memory limit exceeded")
    assert result.limit == "memory"
    assert harness.vm is not None
    assert harness.vm.broken == "memory"


async def test_json_decode_out_of_memory_cannot_be_caught() -> None:
    harness = Harness(limits=Limits(memory_bytes=4 * 1024 * 1024, cpu_seconds=2))
    error = await harness.error("""
        local text = "[" .. string.rep("1,", 600000) .. "1]"
        local ok, err = pcall(json.decode, text)
        return "caught: " .. tostring(err)""")
    assert error.endswith("memory limit exceeded")


async def test_shared_references_count_once_each_when_crossing() -> None:
    from tests.conftest import RecordingCapability

    harness = Harness(limits=Limits(memory_bytes=8 * 1024 * 1024, cpu_seconds=2))
    host = RecordingCapability()
    await harness.load("""return {RUN = function(ctx)
        local s = string.rep("x", 1024 * 1024)
        local many = {}
        for i = 1, 300 do many[i] = s end
        return select(2, pcall(ctx.events.emit, "E", many))
    end}""")
    result = await harness.run("RUN", capabilities={"events": host})
    assert result.ok, result.error
    assert host.calls == []
    assert isinstance(result.value, str)
    assert "value too large" in result.value
    assert "argument #2" in result.value


async def test_a_vm_at_its_limit_still_answers_after_a_conversion_fails() -> None:
    from tests.conftest import RecordingCapability

    harness = Harness(limits=Limits(memory_bytes=8 * 1024 * 1024, cpu_seconds=2))
    host = RecordingCapability(answer=["v" * 300_000] * 40)
    await harness.load("""
        hold = {}
        return {
          FILL = function(ctx)
            for i = 1, 20 do hold[i] = string.rep(tostring(i), 150000) end
            return #ctx.kv.find("x")
          end,
          PING = function() return "pong" end,
        }""")
    failed = await harness.run("FILL", capabilities={"kv": host})
    assert not failed.ok
    assert failed.limit == "memory"
    # The broken VM is replaced; the next one runs.
    harness.vm = None
    await harness.load("return {PING = function() return 'pong' end}")
    assert (await harness.run("PING")).value == "pong"


# -- wording: no Python, no kernel --------------------------------------------------------------

LEAKY = {
    "surrogate escape": "return select(2, pcall(json.decode, '\"\\\\ud800\"'))",
    "huge integer": "return select(2, pcall(json.decode, string.rep('9', 5000)))",
    "NaN literal": "return select(2, pcall(json.decode, 'NaN'))",
    "bad JSON": "return select(2, pcall(json.decode, '{'))",
    "encode a function": "return select(2, pcall(json.encode, print))",
    "encode bad UTF-8": "return select(2, pcall(json.encode, {'\\xff'}))",
    "print a cut character": """
        local ok, err = pcall(print, string.rep("é", 5000))
        return ok and "printed" or err""",
    "a host call from outside a run": "return select(2, pcall(coroutine.wrap(function() end)))",
}

LEAK_MARKERS = ("<python>", "Traceback", "lupa", "Error(", "codec", "sys.set_int",
                "[string", "surrogates not allowed", "prelude", "upvalue 'trip'")


@pytest.mark.parametrize("body", LEAKY.values(), ids=LEAKY.keys())
async def test_error_texts_name_nothing_of_the_host(harness: Harness, body: str) -> None:
    await harness.load(f"return {{RUN = function(ctx, event)\n{body}\nend}}")
    result = await harness.run("RUN")
    text = f"{result.value!r} {result.error!r} {result.traceback!r}"
    assert not any(marker in text for marker in LEAK_MARKERS), text
    assert all(isinstance(line[2], str) for line in harness.logs)


async def test_tracebacks_show_template_frames_only() -> None:
    harness = Harness(limits=Limits(cpu_seconds=0.2))
    await harness.load("""
        local function spin() while true do end end
        local function boom() error("boom") end
        return {
          SPIN = function() pcall(spin) end,
          BOOM = function() boom() end,
          DEEP = function() local ok = pcall(string.rep, "x", -1) boom() end,
        }""")
    for event in ("SPIN", "BOOM", "DEEP"):
        result = await harness.run(event)
        assert not result.ok
        assert result.traceback is not None
        assert "init.lua:" in result.traceback
        assert not any(marker in result.traceback for marker in LEAK_MARKERS), result.traceback
    spin = await harness.run("SPIN")
    assert spin.error == "init.lua:2: cpu time limit exceeded"


async def test_print_cuts_long_lines_on_a_character_boundary() -> None:
    harness = Harness(limits=Limits(log_line_bytes=11))
    await harness.value("print(string.rep('é', 10))")
    assert harness.logs[0][2] == "ééééé... (truncated)"
