"""Values crossing between Lua and JSON: round trips and clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moonshard.sandbox.convert import MAX_DEPTH
from moonshard.values import JsonValue
from tests.conftest import Harness, RecordingCapability

ROUND_TRIPS: list[JsonValue] = [
    None, True, False, 0, -1, 2**53, 2**63 - 1, 1.5, -0.25, "", "text", "snowflake 123",
    "ünïcödé ✓ 🎉", [], {}, [1, 2, 3], {"a": 1}, [None, 1, None], {"k": None},
    {"nested": {"list": [{"x": [[], {}]}]}}, [[[[["deep"]]]]],
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
async def test_event_data_round_trips_through_lua(harness: Harness, value: JsonValue) -> None:
    # event.data -> Lua table -> handler return value -> Python, unchanged.
    await harness.load("return {ECHO = function(ctx, event) return event.data.v end}")
    result = await harness.run("ECHO", {"v": value})
    assert result.ok, result.error
    assert result.value == value


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
async def test_json_encode_decode_round_trip_in_lua(harness: Harness, value: JsonValue) -> None:
    await harness.load(
        "return {RT = function(ctx, event) return json.decode(json.encode(event.data.v)) end}")
    result = await harness.run("RT", {"v": value})
    assert result.ok, result.error
    assert result.value == value


async def test_host_calls_round_trip_values(harness: Harness) -> None:
    host = RecordingCapability()
    value = await harness.value(
        "return ctx.kv.get({a = {1, 2, json.null}, b = json.object(), c = {}})",
        capabilities={"kv": host})
    assert value == {"a": [1, 2, None], "b": {}, "c": []}
    assert host.calls == [("get", [{"a": [1, 2, None], "b": {}, "c": []}])]


async def test_json_null_is_a_distinct_value(harness: Harness) -> None:
    value = await harness.value(
        "local d = json.decode('{\"x\": null}')\n"
        "return {d.x == json.null, d.x ~= nil, json.encode(json.null), event.data.y == json.null}",
        data={"y": None})
    assert value == [True, True, "null", True]


async def test_integers_and_floats_keep_their_kind(harness: Harness) -> None:
    value = await harness.value(
        "return {math.type(event.data.i), math.type(event.data.f), json.encode({1, 1.5, 2^53})}",
        data={"i": 7, "f": 7.0})
    assert value == ["integer", "float", "[1,1.5,9007199254740992.0]"]


REFUSALS = {
    "a function": ("return {f = print}", "cannot be converted to JSON"),
    "a coroutine": ("return coroutine.create(print)", "cannot be converted to JSON"),
    "a cycle": ("local t = {} t.self = t return t", "contains a cycle"),
    "mixed keys": ("return {1, 2, x = 3}", "mixes array items and string keys"),
    "a boolean key": ("return {[true] = 1}", "keys must be strings"),
    "a table key": ("return {[{}] = 1}", "keys must be strings"),
    "a sparse array": ("return {[1] = 1, [3] = 3}", "keys 1..n with no holes"),
    "a float key": ("return {[1.5] = 1}", "mixes array items"),
    "NaN": ("return 0/0", "must be finite"),
    "infinity": ("return math.huge", "must be finite"),
    "non-UTF-8": ("return '\\xff\\xfe'", "not valid UTF-8"),
    "non-UTF-8 nested": ("return {a = {'\\xc3'}}", "not valid UTF-8"),
}


@pytest.mark.parametrize(("body", "message"), REFUSALS.values(), ids=REFUSALS.keys())
async def test_unconvertible_return_values_fail_clearly(
    harness: Harness, body: str, message: str,
) -> None:
    error = await harness.error(body)
    assert error.startswith("the handler's return value: ")
    assert message in error


@pytest.mark.parametrize(("body", "message"), REFUSALS.values(), ids=REFUSALS.keys())
async def test_json_encode_refuses_the_same_values(
    harness: Harness, body: str, message: str,
) -> None:
    value = await harness.value(
        f"local v = (function() {body} end)()\n"
        "local ok, err = pcall(json.encode, v) return {ok, err}")
    assert isinstance(value, list)
    assert value[0] is False
    assert message in value[1]


async def test_unconvertible_host_arguments_fail_at_the_call(harness: Harness) -> None:
    host = RecordingCapability()
    error = await harness.error("\nlocal x = ctx.kv.get('k', {scope = print})",
                                capabilities={"kv": host})
    assert error.startswith("init.lua:3:")
    assert "argument #2" in error
    assert "cannot be converted to JSON" in error
    assert host.calls == []


async def test_non_utf8_strings_stay_bytes_inside_lua(harness: Harness) -> None:
    value = await harness.value("local s = '\\xff\\xfe' return {#s, s:byte(1), utf8.len(s) == nil}")
    assert value == [2, 255, True]


async def test_nesting_limit(harness: Harness) -> None:
    deep: JsonValue = "bottom"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    await harness.load("return {ECHO = function(ctx, event) return event.data end}")
    result = await harness.run("ECHO", {"v": deep})
    assert not result.ok
    assert result.error is not None
    assert "nests deeper" in result.error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
async def test_any_json_value_round_trips(harness: Harness, value: JsonValue) -> None:
    if harness.vm is None:
        await harness.load("return {ECHO = function(ctx, event) return event.data.v end}")
    result = await harness.run("ECHO", {"v": value})
    assert result.ok, result.error
    assert result.value == value


SCALAR_RESULTS = {
    "an integer": ("return math.maxinteger", 2**63 - 1),
    "a float": ("return 1.5", 1.5),
    "true": ("return true", True),
    "false": ("return false", False),
    "nil": ("return nil", None),
    "nothing": ("local x = 1", None),
    "a short string": ("return 'done'", "done"),
}


@pytest.mark.parametrize("after_host_call", [False, True], ids=["first step", "after a host call"])
@pytest.mark.parametrize(("body", "expected"), SCALAR_RESULTS.values(), ids=SCALAR_RESULTS.keys())
async def test_scalar_results_come_back_as_they_are(
    harness: Harness, body: str, expected: JsonValue, after_host_call: bool,
) -> None:
    # A run finished with a number, a boolean or nil is answered in the same call into Lua
    # that ran it; the value must be the one the table path would have given.
    prefix = "ctx.kv.get('k')\n" if after_host_call else ""
    value = await harness.value(prefix + body, capabilities={"kv": RecordingCapability()})
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("body", ["return 0/0", "return -math.huge"])
async def test_non_finite_results_after_a_host_call_are_refused(
    harness: Harness, body: str,
) -> None:
    error = await harness.error(f"ctx.kv.get('k')\n{body}",
                                capabilities={"kv": RecordingCapability()})
    assert error == "the handler's return value: numbers must be finite (no NaN or infinity)"


async def test_an_event_without_data_has_an_empty_object(harness: Harness) -> None:
    value = await harness.value(
        "return {json.encode(event.data), next(event.data) == nil, event.author == nil}")
    assert value == ["{}", True, True]
