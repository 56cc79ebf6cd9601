"""Template validation: every refusal names the file, the line and the problem."""

from __future__ import annotations

import pytest

from moonshard.errors import LimitExceeded, TemplateError
from moonshard.limits import Limits
from moonshard.sandbox import run_inline
from moonshard.sandbox.loading import validate_template
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId

TENANT = TenantId.guild(1)
LIMITS = Limits(cpu_seconds=0.5)


async def validate(files: dict[str, str], name: str = "t",
                   limits: Limits = LIMITS) -> Template:
    return await validate_template(TENANT, name, files, limits, run_inline)


async def test_a_valid_template_gives_its_subscriptions() -> None:
    template = await validate({
        "init.lua": "local g = require('greet')\n"
                    "return {GUILD_MEMBER_ADD = g, KeyExpiry = function() end}",
        "greet.lua": "return function(ctx, event) return 'hi' end",
    })
    assert template.events == ("GUILD_MEMBER_ADD", "KeyExpiry")
    assert template.name == "t"


BROKEN = {
    "syntax error": ({"init.lua": "return {\n  X = function( end\n}"}, "init.lua", 2,
                     "expected near 'end'"),
    "syntax error in another file": (
        {"init.lua": "return {}", "lib/util.lua": "local x = = 1"}, "lib/util.lua", 1,
        "unexpected symbol"),
    "runtime error at load": ({"init.lua": "\n\nlocal x = nil + 1\nreturn {}"}, "init.lua", 3,
                              "attempt to perform arithmetic"),
    "error in a required file": (
        {"init.lua": "require('helper')\nreturn {}", "helper.lua": "\nerror('nope')"},
        "helper.lua", 2, "nope"),
    "returns nothing": ({"init.lua": "local x = 1"}, "init.lua", None,
                        "must return a table that maps event names"),
    "returns a string": ({"init.lua": "return 'x'"}, "init.lua", None,
                         "must return a table"),
    "handler not a function": ({"init.lua": "return {X = 1}"}, "init.lua", None,
                               "handler for 'X' is a number, not a function"),
    "non-string key": ({"init.lua": "return {function() end}"}, "init.lua", None,
                       "keys must be event names"),
    "loops at load": ({"init.lua": "while true do end"}, "init.lua", 1,
                      "cpu time limit exceeded"),
    "missing init.lua": ({"other.lua": "return {}"}, "init.lua", None, "needs an init.lua"),
    "bad file name": ({"init.lua": "return {}", "../x.lua": ""}, "../x.lua", None,
                      "bad file name"),
    "yields at load": ({"init.lua": "coroutine.yield()\nreturn {}"}, "init.lua", None,
                       "cannot yield"),
}


@pytest.mark.parametrize(("files", "file", "line", "message"), BROKEN.values(), ids=BROKEN.keys())
async def test_broken_templates_are_refused_with_file_and_line(
    files: dict[str, str], file: str, line: int | None, message: str,
) -> None:
    with pytest.raises(TemplateError) as caught:
        await validate(files)
    error = caught.value
    assert error.file == file
    assert error.line == line
    assert message in error.message
    # An error raised while init.lua (or what it requires) runs is a load error; the rest,
    # what does not compile or has the wrong shape, are compile errors.
    ran = ("runtime error at load", "error in a required file", "loops at load")
    expected = "load_error" if any(BROKEN[case][0] is files for case in ran) else \
        "compile_error"
    assert error.to_json()["code"] == expected
    if expected == "load_error":
        assert error.message.startswith("error while loading: ")


async def test_size_limit() -> None:
    big = "-- " + "x" * 2000 + "\nreturn {}"
    with pytest.raises(LimitExceeded, match="the limit is 1000") as caught:
        await validate({"init.lua": big}, limits=Limits(template_source_bytes=1000))
    assert caught.value.limit == "template.size"


@pytest.mark.parametrize("name", ["", "../up", "-dash", "a" * 65, "with space", "x/y"])
async def test_bad_template_names(name: str) -> None:
    with pytest.raises(TemplateError, match="bad template name"):
        await validate({"init.lua": "return {}"}, name=name)


def test_template_sets_are_immutable_and_versioned() -> None:
    a = Template("a", {"init.lua": "return {}"}, events=("X",))
    b = Template("b", {"init.lua": "return {}"}, events=("Y",), paused=True)
    first = TemplateSet(TENANT, 1, (b, a))
    assert [t.name for t in first.templates] == ["a", "b"]
    assert first.subscriptions == {"X"}  # a paused template subscribes to nothing
    second = first.with_template(Template("a", {"init.lua": "return {}"}, events=("Z",)), 2)
    assert first.subscriptions == {"X"}
    assert second.subscriptions == {"Z"}
    assert second.version == 2
    assert first.version == 1
    assert second.without("a", 3).templates == (b,)
    with pytest.raises(TypeError):
        a.files["init.lua"] = "changed"  # type: ignore[index]
