"""@moonshard/duration in the real sandbox: parsing, formatting, errors for bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Harness

GOOD = [
    ("10m", 600), ("2h30m", 9000), ("1d", 86400), ("90s", 90), ("1w", 604800),
    ("1h 30m", 5400), ("1 hour, 30 minutes", 5400), ("1.5h", 5400), ("  2D  ", 172800),
    ("0s", 0), ("3 days 4h", 273600), ("45 secs", 45),
]

BAD = [
    ("10x", 'unknown unit "x"'),
    ("10", "has no unit"),
    ("", "the duration is empty"),
    ("-5m", "is negative"),
    ("soon", "is not a duration"),
    ("1h30", '"30" has no unit'),
    ("5 months", 'unknown unit "months"'),
    ("1" * 120 + "s", "too long"),
]


@pytest.mark.parametrize(("text", "seconds"), GOOD)
async def test_parse_reads_durations(harness: Harness, text: str, seconds: int) -> None:
    value = await harness.value(
        f'return require("@moonshard/duration").parse({json.dumps(text)})')
    assert value == seconds


@pytest.mark.parametrize(("text", "wording"), BAD)
async def test_parse_refuses_bad_input_at_the_callers_line(
        harness: Harness, text: str, wording: str) -> None:
    error = await harness.error(
        f'local duration = require("@moonshard/duration")\n'
        f'local seconds = duration.parse({json.dumps(text)})\nreturn seconds')
    assert error.startswith("init.lua:3: duration.parse: ")
    assert wording in error


async def test_try_parse_returns_nil_and_the_reason(harness: Harness) -> None:
    value = await harness.value("""
        local duration = require("@moonshard/duration")
        local seconds, problem = duration.try_parse("10 parsecs")
        return {seconds == nil, problem, (duration.try_parse(30)), duration.try_parse({}) == nil}
    """)
    assert value == [True, '"10 parsecs": unknown unit "parsecs" (units: s, m, h, d, w)', 30,
                     True]


@pytest.mark.parametrize(("call", "text"), [
    ("format(9000)", "2h30m"), ("format(0)", "0s"), ("format(59.6)", "1m"),
    ("format(90061)", "1d1h1m1s"), ("format(90061, {units = 2})", "1d1h"),
    ("format(3660, {long = true})", "1 hour 1 minute"),
    ("format(7200 + 120, {long = true})", "2 hours 2 minutes"),
    ("format(0, {long = true})", "0 seconds"), ("format(-60)", "-1m"),
    ("format(1209600)", "2w"),
])
async def test_format_writes_durations(harness: Harness, call: str, text: str) -> None:
    assert await harness.value(f'return require("@moonshard/duration").{call}') == text


async def test_format_output_parses_back_to_the_same_seconds(harness: Harness) -> None:
    value = await harness.value("""
        local duration = require("@moonshard/duration")
        local wrong = {}
        for _, n in ipairs({0, 1, 59, 60, 61, 3599, 3600, 86399, 86400, 93784, 604800, 1e7}) do
          if duration.parse(duration.format(n)) ~= n then wrong[#wrong + 1] = n end
        end
        return wrong
    """)
    assert value == []


@pytest.mark.parametrize(("argument", "wording"), [
    ('"10m"', "duration.format: expected a number of seconds, got 10m"),
    ("1e300", "duration.format: 1e+300 seconds is too large to write"),
    ("0/0", "duration.format: expected a number of seconds"),
])
async def test_format_refuses_what_it_cannot_write(
        harness: Harness, argument: str, wording: str) -> None:
    error = await harness.error(
        f'local text = require("@moonshard/duration").format({argument})')
    assert wording in error
    assert error.startswith("init.lua:2:")
