"""CPU, memory, recursion and pattern limits: each stops the handler with a clear error."""

from __future__ import annotations

import pytest

from moonshard.limits import Limits
from tests.conftest import Harness, RecordingCapability

CPU_HOGS = {
    "plain loop": "while true do end",
    "under pcall": "pcall(function() while true do end end); return 'swallowed'",
    "pcall in a loop": "while true do pcall(function() while true do end end) end",
    "under xpcall": "xpcall(function() while true do end end, function(e) return e end)",
    "xpcall handler loops": "xpcall(function() error('x') end, function() while true do end end)",
    "in a coroutine": "coroutine.resume(coroutine.create(function() while true do end end))",
    "in coroutine.wrap": "pcall(coroutine.wrap(function() while true do end end))",
    "nested coroutines": """
        local function nest(depth)
          if depth == 0 then while true do end end
          local co = coroutine.create(function() nest(depth - 1) end)
          return coroutine.resume(co)
        end
        return tostring(nest(5))""",
    "error objects caught repeatedly": """
        for i = 1, 1e12 do local ok = pcall(error, {}) end""",
    "string building in a loop": "local s = '' for i = 1, 1e12 do s = ('x'):rep(10) end",
    "table.sort comparator": """
        local t = {} for i = 1, 100 do t[i] = i end
        table.sort(t, function(a, b) while true do end end)""",
    "load-ed code": "load('while true do end')()",
}


@pytest.mark.parametrize("body", CPU_HOGS.values(), ids=CPU_HOGS.keys())
async def test_cpu_hogs_stop_with_the_cpu_limit(harness: Harness, body: str) -> None:
    await harness.load(f"return {{RUN = function(ctx, event)\n{body}\nend}}")
    result = await harness.run("RUN")
    assert not result.ok
    assert result.error is not None
    assert result.error.endswith("cpu time limit exceeded")
    assert result.limit == "cpu"
    # The VM stays usable: a CPU break does not corrupt it.
    await harness.load("return {OK = function() return 'fine' end}", name="ok")
    assert (await harness.run("OK", name="ok")).value == "fine"


async def test_cpu_limit_applies_while_a_template_loads(harness: Harness) -> None:
    from moonshard.errors import TemplateError

    with pytest.raises(TemplateError, match="cpu time limit exceeded"):
        await harness.load("while true do end\nreturn {}")


async def test_cpu_limit_counts_across_host_calls(harness: Harness) -> None:
    host = RecordingCapability()
    error = await harness.error(
        "while true do ctx.kv.get('x'); for i = 1, 1000 do end end",
        capabilities={"kv": host})
    assert error.endswith(": cpu time limit exceeded")
    assert len(host.calls) > 10


MEMORY_HOGS = {
    "table growth": "local t = {} for i = 1, 1e9 do t[i] = i end",
    "string.rep": "return #string.rep('x', 100 * 1024 * 1024)",
    "doubling concatenation": "local s = 'x' for i = 1, 64 do s = s .. s end return #s",
    "under pcall": """
        local ok = pcall(function() local t = {} for i = 1, 1e9 do t[i] = {} end end)
        return 'swallowed'""",
    "table.concat": "local t = {} for i = 1, 1e7 do t[i] = 'abcdefgh' end return #table.concat(t)",
}


@pytest.mark.parametrize("body", MEMORY_HOGS.values(), ids=MEMORY_HOGS.keys())
async def test_memory_hogs_stop_with_the_memory_limit(body: str) -> None:
    harness = Harness(limits=Limits(memory_bytes=8 * 1024 * 1024, cpu_seconds=5))
    await harness.load(f"return {{RUN = function(ctx, event)\n{body}\nend}}")
    result = await harness.run("RUN")
    assert not result.ok
    assert result.error is not None
    assert result.error.endswith("memory limit exceeded")
    assert harness.vm is not None
    assert harness.vm.broken == "memory"
    # A fresh VM for the same tenant works again.
    harness.new_vm()
    assert await harness.value("return 'rebuilt'") == "rebuilt"


async def test_memory_within_limit_is_fine() -> None:
    harness = Harness(limits=Limits(memory_bytes=8 * 1024 * 1024))
    assert await harness.value("return #string.rep('x', 1024 * 1024)") == 1024 * 1024


async def test_infinite_recursion_is_an_error_not_a_crash() -> None:
    # Lua's stack limit (a million slots) takes more than the default 25 MiB: memory runs out
    # first. With room to spare, Lua's own stack overflow error is what the template sees.
    roomy = Harness(limits=Limits(memory_bytes=256 * 1024 * 1024, cpu_seconds=5))
    error = await roomy.error("local function f() return 1 + f() end return f()")
    assert "stack overflow" in error
    tight = Harness(limits=Limits(memory_bytes=8 * 1024 * 1024, cpu_seconds=5))
    assert await tight.error("local function f() return 1 + f() end return f()") == \
        "memory limit exceeded"


async def test_deep_pcall_and_coroutine_nesting(harness: Harness) -> None:
    error = await harness.error(
        "local function f(n) return select(2, assert(pcall(f, n + 1))) end return f(1)")
    assert "stack overflow" in error or "C stack overflow" in error or "error" in error
    error = await harness.error("""
        local function nest()
          local co = coroutine.wrap(nest)
          return co()
        end
        return nest()""")
    assert "overflow" in error or "too many" in error


async def test_deeply_nested_tables_from_json_are_refused(harness: Harness) -> None:
    value = await harness.value(
        "local ok, err = pcall(json.decode, string.rep('[', 5000) .. string.rep(']', 5000))"
        " return err")
    assert isinstance(value, str)
    assert "json.decode" in value


PATTERN_BOMBS = {
    "find": 'return string.rep("a", 400):find(".-.-.-.-b$")',
    "method match": 'return (string.rep("a", 5000)):match("(.*)(.*)(.*)x")',
    "gmatch": 'for m in string.rep("a", 5000):gmatch("a*a*a*b") do end',
    "gsub": 'return (string.gsub(string.rep("a", 3000), "%a*%a*%a*b", "x"))',
    "char classes": 'return string.rep("ab", 2000):find("[ab]-[ab]-[ab]-c")',
}


@pytest.mark.parametrize("body", PATTERN_BOMBS.values(), ids=PATTERN_BOMBS.keys())
async def test_pattern_bombs_are_refused_before_matching(harness: Harness, body: str) -> None:
    error = await harness.error(body)
    assert "too costly for a subject of" in error


async def test_ordinary_patterns_on_long_subjects_still_work(harness: Harness) -> None:
    value = await harness.value("""
        local long = string.rep("word ", 20000)
        local words = 0
        for _ in long:gmatch("%a+") do words = words + 1 end
        local k, v = ("key = value"):match("^(%w+)%s*=%s*(%w+)$")
        local plain = long:find(".-.-.-", 1, true) == nil
        return {words, k, v, plain, (long:gsub("word", "w")):sub(1, 4), ("a,b;c"):find("[,;]")}
    """)
    assert value == [20000, "key", "value", True, "w w ", 2, 2]


async def test_log_lines_per_run_are_bounded() -> None:
    harness = Harness(limits=Limits(log_lines_per_run=5))
    await harness.value("for i = 1, 20 do print('line', i) end")
    messages = [line[2] for line in harness.logs]
    assert messages[:5] == [f"line\t{i}" for i in range(1, 6)]
    assert len(messages) == 6
    assert "log limit of 5 lines per handler run reached" in messages[5]
    # The next run may log again.
    harness.logs.clear()
    await harness.run("RUN")
    assert len(harness.logs) == 6
