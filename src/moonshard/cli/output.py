"""How the client commands print: rich tables and colour on a terminal, exact plain text
when stdout is a pipe or a file (no re-wrapping at 80 columns, nothing cut short)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Printer"]


class Printer:
    """One command's output. ``terminal`` defaults to whether stdout is one."""

    __slots__ = ("_console", "terminal")

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        # soft_wrap: rich never inserts line breaks of its own; the terminal wraps.
        self._console = Console(highlight=False, soft_wrap=True) if self.terminal else None

    def line(self, *parts: Text | str) -> None:
        """One line made of ``parts`` (styled on a terminal, plain text elsewhere)."""
        if self._console is not None:
            self._console.print(*parts, sep="")
        else:
            click.echo("".join(part.plain if isinstance(part, Text) else part
                               for part in parts))
        sys.stdout.flush()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A table on a terminal; piped, a header line and one tab-separated line per row,
        each cell whole (a cell's tabs and newlines are written as \\t and \\n)."""
        if self._console is not None:
            table = Table(title=title)
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*row)
            self._console.print(table)
            return
        click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join(_cell(cell) for cell in row))


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
