"""The escape battery: nothing outside what TEMPLATES.md allows is reachable from a template."""

from __future__ import annotations

import pytest

from tests.conftest import Harness, RecordingCapability

FORBIDDEN_GLOBALS = ["io", "debug", "package", "loadstring", "dofile", "loadfile", "python"]


@pytest.mark.parametrize("name", FORBIDDEN_GLOBALS)
async def test_forbidden_globals_fail_with_a_clear_error(harness: Harness, name: str) -> None:
    error = await harness.error(f"return {name}")
    assert f"{name} is not available in templates" in error
    assert error.startswith("init.lua:2:")


@pytest.mark.parametrize("call", [
    "os.execute('echo hi')", "os.getenv('HOME')", "os.exit(1)", "os.remove('/tmp/x')",
    "os.rename('a', 'b')", "os.tmpname()", "string.dump(function() end)",
])
async def test_forbidden_library_functions(harness: Harness, call: str) -> None:
    error = await harness.error(f"return {call}")
    assert "is not available in templates" in error


async def test_allowed_os_functions_work(harness: Harness) -> None:
    value = await harness.value(
        "return {type(os.time()), type(os.clock()), os.date('!%Y', 0), os.difftime(5, 3)}")
    assert value == ["number", "number", "1970", 2.0]


async def test_require_cannot_reach_lua_modules(harness: Harness) -> None:
    for module in ("os", "io", "debug", "string", "python"):
        error = await harness.error(f"return require('{module}')")
        assert "not found: this template has no file" in error


async def test_bytecode_is_refused(harness: Harness) -> None:
    value = await harness.value("""
        local results = {}
        local f, err = load("\\27Lua\\x54\\0garbage")
        results[1] = f == nil and err
        local g, err2 = load("return 1", "x", "b")
        results[2] = g == nil and err2
        local h, err3 = load(function() return nil end)
        results[3] = h == nil and err3
        return results
    """)
    assert isinstance(value, list)
    assert "binary chunks are refused" in value[0]
    assert "binary chunks are refused" in value[1]
    assert "only text chunks" in value[2]


async def test_load_defaults_to_the_templates_own_globals(harness: Harness) -> None:
    value = await harness.value("""
        secret = 41
        local f = load("secret = secret + 1; return secret")
        local g = load("return marker", "chunk", "t", {marker = "own env"})
        return {f(), secret, g()}
    """)
    assert value == [42, 42, "own env"]


async def test_string_metatable_is_protected(harness: Harness) -> None:
    value = await harness.value("""
        local results = {}
        results[1] = getmetatable("")
        results[2] = select(2, pcall(setmetatable, "", {}))
        results[3] = select(2, pcall(function() string.upper = function() return "pwned" end end))
        results[4] = select(2, pcall(rawset, string, "upper", print))
        results[5] = ("abc"):upper()
        return results
    """)
    assert isinstance(value, list)
    assert value[0] is False
    assert "table expected" in value[1] or "protected" in value[1]
    assert "read-only" in value[2]
    assert "read-only" in value[3]
    assert value[4] == "ABC"


async def test_library_tables_are_read_only(harness: Harness) -> None:
    for target in ("table.insert = nil", "math.pi = 3", "json.null = 1", "coroutine.wrap = nil",
                   "os.time = nil", "utf8.char = nil", "setmetatable(string, {})",
                   "rawset(math, 'x', 1)", "table.insert(string, 'x')"):
        error = await harness.error(target)
        assert "read-only" in error or "protected" in error or "library table" in error, target


async def test_templates_cannot_see_each_others_globals(harness: Harness) -> None:
    await harness.load("""
        shared = "from a"
        string_upper = string.upper
        _G.also = 1
        return {SET = function() counter = 1; pcall(function() string.upper = nil end) end}
    """, name="a")
    await harness.load("""
        return {GET = function()
            return {shared = shared, counter = counter, also = also, upper = ("x"):upper()}
        end}
    """, name="b")
    assert (await harness.run("SET", name="a")).ok
    result = await harness.run("GET", name="b")
    assert result.value == {"upper": "X"}


async def test_collectgarbage_allows_only_count(harness: Harness) -> None:
    assert isinstance(await harness.value("return collectgarbage('count')"), float)
    for option in ("collect", "stop", "step", "incremental", "generational"):
        error = await harness.error(f"collectgarbage('{option}')")
        assert "only collectgarbage(\"count\")" in error


async def test_gc_metamethods_are_refused(harness: Harness) -> None:
    error = await harness.error("setmetatable({}, {__gc = function() while true do end end})")
    assert "__gc metamethods are not allowed" in error


async def test_python_is_unreachable_through_ctx_and_event(harness: Harness) -> None:
    # Walks everything reachable from the template: no userdata (a Python object) anywhere.
    value = await harness.value("""
        local seen, found = {}, {}
        local function walk(v, path)
          local t = type(v)
          if t == "userdata" or t == "thread" then found[#found + 1] = path .. ":" .. t end
          if (t == "table" or t == "function" or t == "string") and not seen[v] then
            seen[v] = true
            local mt = getmetatable(v)
            if mt then walk(mt, path .. "<mt>") end
            if t == "table" then
              for k, x in pairs(v) do
                walk(k, path .. "[k]"); walk(x, path .. "." .. tostring(k))
              end
            end
          end
        end
        walk(ctx, "ctx"); walk(event, "event"); walk(_G, "_G"); walk(string, "string")
        walk(ctx.kv, "kv"); walk(ctx.discord, "discord")
        local probes = {}
        probes.kv = select(2, pcall(function() return ctx.kv.get.__globals__ end))
        probes.data = event.data.__class__ == nil
        probes.json = select(2, pcall(function() return json.encode.__globals__ end))
        probes.print = type(print)
        return {found = found, probes = probes}
    """, data={"nested": {"list": [1, 2]}})
    assert isinstance(value, dict)
    assert value["found"] == []
    probes = value["probes"]
    assert isinstance(probes, dict)
    assert "attempt to index a function value" in probes["kv"]
    assert "attempt to index a function value" in probes["json"]
    assert probes["data"] is True
    assert probes["print"] == "function"


async def test_python_error_objects_do_not_leak(harness: Harness) -> None:
    # A Python exception raised under json.decode reaches the template as a string only.
    value = await harness.value("""
        local ok, err = pcall(json.decode, "{not json")
        local ok2, err2 = pcall(json.encode, {f = print})
        return {type(err), err, type(err2), err2}
    """)
    assert isinstance(value, list)
    assert value[0] == "string"
    assert "json.decode: invalid JSON" in value[1]
    assert value[2] == "string"
    assert "cannot be converted to JSON" in value[3]


async def test_host_calls_pass_through_user_coroutines(harness: Harness) -> None:
    host = RecordingCapability()
    value = await harness.value("""
        local co = coroutine.create(function(a)
          local inner = coroutine.wrap(function() return ctx.kv.get("deep") end)
          local got = ctx.kv.get(a)
          local y = coroutine.yield(got)
          return y .. "+" .. inner()
        end)
        local _, first = coroutine.resume(co, "hello")
        local _, second = coroutine.resume(co, "resumed")
        return {first, second, coroutine.status(co)}
    """, capabilities={"kv": host})
    assert value == ["hello", "resumed+deep", "dead"]
    assert host.calls == [("get", ["hello"]), ("get", ["deep"])]


async def test_a_handler_cannot_yield_at_top_level(harness: Harness) -> None:
    error = await harness.error("coroutine.yield(1)")
    assert "a handler cannot yield" in error


async def test_host_errors_arrive_at_the_templates_line(harness: Harness) -> None:
    error = await harness.error("\n\nlocal x = ctx.discord.send_message{content = 'x'}")
    assert error.startswith("init.lua:4:")
    assert "ctx.discord is not available here" in error
    # A tail call leaves no frame of the handler; the error still says what failed.
    error = await harness.error("return ctx.discord.send_message{content = 'x'}")
    assert "ctx.discord.send_message: ctx.discord is not available here" in error


async def test_require_loads_template_files_once(harness: Harness) -> None:
    await harness.load(
        "local a = require('lib.util'); local b = require('lib.util')\n"
        "local json2 = require('@moonshard/json')\n"
        "return {RUN = function() return {a == b, a.loads, json2 == json} end}",
        files={"lib/util.lua": "loads = (loads or 0) + 1; return {loads = loads}"})
    result = await harness.run("RUN")
    assert result.value == [True, 1, True]


async def test_require_errors(harness: Harness) -> None:
    error = await harness.error("return require('missing')")
    assert "module 'missing' not found" in error
    error = await harness.error("return require('@moonshard/nope')")
    assert "no built-in library '@moonshard/nope'" in error
