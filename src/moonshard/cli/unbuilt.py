"""Commands of the CLI contract whose parts are not built yet: each says so clearly."""

from __future__ import annotations

import click

__all__ = ["unbuilt_commands"]

_UNBUILT = (
    ("serve", "the service (store, worker pool, timers, HTTP API)"),
    ("template", "the HTTP API client (template push/ls/show/rm)"),
    ("dispatch", "the HTTP API client"),
    ("kv", "the HTTP API client"),
    ("logs", "the HTTP API client"),
    ("token", "the HTTP API client"),
)


def _unbuilt(name: str, part: str) -> click.Command:
    @click.command(name=name, help=f"Not built yet: needs {part}.",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def command() -> None:
        raise click.ClickException(
            f"'moonshard {name}' is not built yet: it needs {part}. "
            "Use 'moonshard exec' to run a template locally.")
    return command


def unbuilt_commands() -> list[click.Command]:
    return [_unbuilt(name, part) for name, part in _UNBUILT]
