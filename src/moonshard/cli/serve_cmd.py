"""``moonshard serve``: the whole system (store, worker pool, HTTP API) until stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from moonshard.config import ConfigError, Settings
from moonshard.errors import MoonshardError

__all__ = ["serve"]


if TYPE_CHECKING:
    _ParamType = click.ParamType[object]
else:  # generic only in recent click releases
    _ParamType = click.ParamType


class _Setting(_ParamType):
    """A typed setting in ``--help`` (INTEGER, SECONDS, SIZE...) whose text is checked by
    ``Settings.resolve``, so a bad flag is the same one-line error, naming its source, as a bad
    environment variable or TOML key."""

    def __init__(self, name: str) -> None:
        self.name = name

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> object:
        return value


_INTEGER, _FLOAT, _SIZE = _Setting("integer"), _Setting("float"), _Setting("size")
_TOPOLOGY = _Setting("thread|process|ray")


def _say(message: str) -> None:
    click.echo(message, err=True)
    sys.stderr.flush()


@click.command("serve")
@click.option("--database-url", help="sqlite:///PATH or postgresql://... "
              "[default: sqlite:///./moonshard-data/moonshard.db]")
@click.option("--topology", type=_TOPOLOGY,
              help="thread, process or ray [default: process]")
@click.option("--workers", type=_INTEGER, help="Workers in the pool [default: number of CPUs]")
@click.option("--host", help="Where the HTTP API listens [default: 127.0.0.1]")
@click.option("--port", type=_INTEGER, help="The HTTP API's port [default: 8080]")
@click.option("--admin-token", help="The operator's bearer token [default: generated into the "
              "data folder]")
@click.option("--discord-token", help="Discord bot token: connects to the gateway and REST "
              "(prefer MOONSHARD_DISCORD_TOKEN: a flag shows in ps)")
@click.option("--discord-api-url", help="Discord's REST base [default: "
              "https://discord.com/api/v10]")
@click.option("--discord-intents", help="Gateway intents: names (guilds,guild_messages,...) or "
              "a number [default: guilds, members, moderation, messages, message content, "
              "reactions]")
@click.option("--memory-limit", type=_SIZE, help="Memory per tenant VM [default: 25MiB]")
@click.option("--cpu-limit", type=_FLOAT, help="CPU seconds per handler run [default: 10]")
@click.option("--ray-address",
              help="The Ray cluster of TOPOLOGY=ray: auto, or an address [default: a local Ray]")
@click.option("--stop-deadline", type=_FLOAT,
              help="Seconds in-flight work gets to finish when stopping [default: 30]")
@click.option("--log-lines", type=_INTEGER, help="Log lines kept per tenant [default: 1000]")
@click.option("--log-days", type=_FLOAT, help="Days a tenant's log line is kept [default: 7]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML settings file [default: ./moonshard.toml when it exists]")
def serve(config_file: Path | None, **flags: str | None) -> None:
    """Run the whole system: store, worker pool and HTTP API. Ctrl-C stops it cleanly.

    Every setting comes from its flag, else the MOONSHARD_<NAME> environment variable, else
    moonshard.toml, else its default (see docs/OPERATIONS.md).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.resolve({name.upper(): value for name, value in flags.items()},
                                    os.environ, config=config_file)
        from moonshard.server.run import serve as run  # noqa: PLC0415 - the server's imports

        code = asyncio.run(run(settings, _say))
    except Exception as error:
        # A refusal raised inside the engine's task group arrives wrapped in a group.
        leaf = _sole_cause(error)
        if isinstance(leaf, ConfigError | MoonshardError):
            _say(f"error: {leaf}")
        else:
            # Not a failure moonshard foresaw: still one line, with its type for a report.
            text = str(leaf).strip().splitlines()[0] if str(leaf).strip() else ""
            _say(f"error: unexpected {type(leaf).__name__}" + (f": {text}" if text else ""))
        sys.exit(1)
    sys.exit(code)


def _sole_cause(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
