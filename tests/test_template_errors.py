"""The wording of a refused template, as an author reads it: compile errors with a hint,
load-time errors named as such, shape errors without a doubled file, no internal frame."""

from __future__ import annotations

import pytest

from moonshard.errors import TemplateError
from moonshard.limits import Limits
from moonshard.sandbox import run_inline
from moonshard.sandbox.loading import validate_template
from moonshard.tenants import TenantId

MISSING_END = """\
return {
  X = function(ctx, event)
    if event.data.a then
      return 1
  end,
}
"""
ASSIGN_FOR_COMPARE = """\
return {
  X = function(ctx, event)
    if event.data.a = 1 then return 1 end
  end,
}
"""
MISSING_THEN = """\
return {
  X = function(ctx, event)
    if event.data.a
      return 1
    end
  end,
}
"""
MISSING_DO = """\
return {
  X = function(ctx, event)
    for i = 1, 3
      print(i)
    end
  end,
}
"""
MISSING_END_AT_EOF = "return {\n  X = function(ctx, event)\n    return 1\n}\n"


async def refusal(source: str, **files: str) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        await validate_template(TenantId.guild(1), "greeter", {"init.lua": source, **files},
                                Limits(), run_inline)
    return caught.value


@pytest.mark.parametrize(("source", "line", "wording"), [
    (MISSING_END, 5, "init.lua:5: unexpected symbol near ',' (hint: a missing `end`? every "
                     "`function`, `if`, `for` and `while` needs its own `end`, before the `,` "
                     "or `}` that follows a handler)"),
    (MISSING_END_AT_EOF, 4, "init.lua:4: 'end' expected (to close 'function' at line 2) near '}' "
                            "(hint: a missing `end`? every `function`, `if`, `for` and "
                            "`while` needs its own `end`)"),
    (ASSIGN_FOR_COMPARE, 3, "init.lua:3: 'then' expected near '=' (hint: `=` stores a value; "
                            "to compare, write `==`, as in `if x == 1 then`)"),
    (MISSING_THEN, 4, "init.lua:4: 'then' expected near 'return' (hint: an `if` or `elseif` "
                      "condition ends with `then`: `if x == 1 then ... end`)"),
    (MISSING_DO, 4, "init.lua:4: 'do' expected near 'print' (hint: a `for` or `while` line "
                    "ends with `do`: `for i = 1, 3 do ... end`)"),
])
async def test_common_compile_errors_carry_file_line_and_a_hint(
        source: str, line: int, wording: str) -> None:
    error = await refusal(source)
    assert str(error) == wording
    assert (error.code, error.template, error.file, error.line) == (
        "compile_error", "greeter", "init.lua", line)


async def test_a_compile_error_in_another_file_names_that_file() -> None:
    error = await refusal('local util = require("util")\nreturn {}',
                          **{"util.lua": "local M = {}\nfunction M.f()\n  if x = 2 then end\n"
                                         "end\nreturn M\n"})
    assert (error.file, error.line) == ("util.lua", 3)
    assert "(hint: `=` stores a value" in str(error)


async def test_a_runtime_error_while_loading_is_a_load_error_with_file_and_line() -> None:
    error = await refusal("local settings = nil\nlocal prefix = '!'\n"
                          "local limit = settings.limit\nreturn {}\n")
    assert str(error) == ("init.lua:3: error while loading: attempt to index a nil value "
                          "(local 'settings')")
    assert (error.code, error.file, error.line) == ("load_error", "init.lua", 3)
    assert error.to_json()["code"] == "load_error"


async def test_an_error_raised_at_load_names_its_line_and_no_internal_frame() -> None:
    error = await refusal('local x = 1\nerror("set CHANNEL_ID first")\nreturn {}\n')
    assert str(error) == "init.lua:2: error while loading: set CHANNEL_ID first"
    assert "<python>" not in str(error)
    assert "prelude" not in str(error)


async def test_a_handler_that_is_not_a_function_is_said_once() -> None:
    error = await refusal("return { Foo = 3 }\n")
    assert str(error) == "init.lua: the handler for 'Foo' is a number, not a function"
    assert "init.lua: init.lua" not in str(error)
    assert (error.code, error.template) == ("compile_error", "greeter")
