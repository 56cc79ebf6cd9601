"""Hints for the compile errors a template author meets most: Lua's own words, then what
usually causes them (a missing ``end``, ``=`` for ``==``, a missing ``then`` or ``do``)."""

from __future__ import annotations

import re

__all__ = ["hint_for"]

_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"near '!'"),
     "Lua writes 'not equal' as `~=`, and 'not' as `not`"),
    (re.compile(r"'then' expected near '='"),
     "`=` stores a value; to compare, write `==`, as in `if x == 1 then`"),
    (re.compile(r"'do' expected near '='"),
     "`=` stores a value; to compare, write `==`, as in `while x == 1 do`"),
    (re.compile(r"'then' expected"),
     "an `if` or `elseif` condition ends with `then`: `if x == 1 then ... end`"),
    (re.compile(r"'do' expected"),
     "a `for` or `while` line ends with `do`: `for i = 1, 3 do ... end`"),
    (re.compile(r"'end' expected|near <eof>"),
     "a missing `end`? every `function`, `if`, `for` and `while` needs its own `end`"),
    (re.compile(r"unexpected symbol near '[,})\]]'"),
     "a missing `end`? every `function`, `if`, `for` and `while` needs its own `end`, "
     "before the `,` or `}` that follows a handler"),
    (re.compile(r"'=' expected near"),
     "a line that is neither a call nor an assignment: a typo, or `local` missing a name?"),
)


def hint_for(message: str) -> str | None:
    """What usually causes a Lua compile error worded as ``message``, or None."""
    for pattern, hint in _HINTS:
        if pattern.search(message):
            return hint
    return None
