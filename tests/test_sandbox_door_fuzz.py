"""Fuzzing the door between Lua and the host: random values, hostile or not, never make it
raise a Python exception, run template code, or go over its budget."""

from __future__ import annotations

import asyncio
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.sandbox import drive, run_inline
from moonshard.values import JsonValue
from tests.conftest import Harness, RecordingCapability

# -- Lua to Python: random Lua constructors -----------------------------------------------------

LUA_SCALARS = st.sampled_from([
    "1", "-0.0", "1.5", "0/0", "math.huge", "-math.huge", "math.maxinteger", "math.mininteger",
    "2^63", "1e308", "true", "false", "nil", "json.null", "''", "'x'", "'\\0'", "'\\xff'",
    "'\\xed\\xa0\\x80'", "'é'", "'\\u{10FFFF}'", "string.rep('z', 300)", "print",
    "coroutine.create(print)", "json.object()", "json.array()",
])
LUA_KEYS = st.sampled_from([
    "'a'", "'b'", "1", "2", "3", "1.5", "true", "{}", "'\\xff'", "''", "-1", "0",
])
METAMETHODS = st.sampled_from([
    "__index", "__newindex", "__pairs", "__len", "__eq", "__tostring", "__call", "__close",
    "__lt", "__concat", "__name",
])


def lua_tables(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    entries = st.lists(st.tuples(LUA_KEYS, children), max_size=5)
    array = st.lists(children, max_size=5)
    trap = st.one_of(st.none(), st.lists(METAMETHODS, min_size=1, max_size=3, unique=True))

    def build(pairs: list[tuple[str, str]], items: list[str], traps: list[str] | None) -> str:
        fields = [f"[{key}] = {value}" for key, value in pairs] + items
        table = "{" + ", ".join(fields) + "}"
        if traps is None:
            return table
        meta = ", ".join(f"{name} = spin" for name in traps)
        return f"setmetatable({table}, {{{meta}}})"

    return st.builds(build, entries, array, trap)


LUA_VALUES = st.recursive(LUA_SCALARS, lua_tables, max_leaves=25)

PRELUDE = """
local function spin() while true do end end
local shared = {1, 2, {3}}
local looped = {} looped.self = looped
"""
SHAPES = st.sampled_from(["{v}", "{v, v}", "{shared, shared, v}", "{looped, v}", "v"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=LUA_VALUES, shape=SHAPES)
def test_any_lua_value_crosses_or_fails_clearly(value: str, shape: str) -> None:
    asyncio.run(_cross(value, shape))


async def _cross(value: str, shape: str) -> None:
    harness = Harness(limits=Limits(cpu_seconds=2, result_bytes=64 * 1024))
    built = shape.replace("v", f"({value})")
    await harness.load(PRELUDE + f"""return {{
        RETURN = function() return {built} end,
        ENCODE = function()
            local ok, text = pcall(json.encode, {built})
            return {{ok, type(text)}}
        end,
        SET = function(ctx) return (pcall(ctx.kv.set, "k", {built})) end,
    }}""")
    returned = await harness.run("RETURN")
    if returned.ok:
        _assert_json(returned.value)
    else:
        assert returned.error is not None
        assert returned.error.startswith("the handler's return value: "), returned.error
    encoded = await harness.run("ENCODE")
    assert encoded.ok, encoded.error
    assert isinstance(encoded.value, list)
    assert encoded.value[1] == "string"
    host = RecordingCapability()
    stored = await harness.run("SET", capabilities={"kv": host})
    assert stored.ok, stored.error
    for _, args in host.calls:
        _assert_json(args)
    # The VM is still usable and no trap ran (a trap would spin into the CPU limit).
    assert harness.vm is not None
    assert harness.vm.broken is None


def _assert_json(value: object) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, list):
        for item in value:
            _assert_json(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _assert_json(item)
    else:
        assert value is None or isinstance(value, bool | int | str)


# -- Python to Lua: random JSON-ish values as event data ---------------------------------------

ODD_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=20)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), ODD_TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(ODD_TEXT, children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=JSONISH)
def test_any_event_data_reaches_lua_or_fails_clearly(data: JsonValue) -> None:
    asyncio.run(_deliver(data))


async def _deliver(data: JsonValue) -> None:
    harness = Harness()
    await harness.load("return {ECHO = function(ctx, event) return event.data end}")
    assert harness.vm is not None
    run = harness.vm.start_handler("t", 1, Event("ECHO", data))
    assert run is not None
    result = await drive(run, {}, run_inline)
    if result.ok:
        _assert_json(result.value)
    else:
        assert result.error is not None
        assert "Traceback" not in result.error
        assert any(word in result.error for word in ("finite", "Unicode", "nests")), result.error
