"""The ``moonshard`` command."""

from __future__ import annotations

import click

from moonshard.cli.bench_cmd import bench
from moonshard.cli.client_cmds import client_commands
from moonshard.cli.dev_cmd import dev
from moonshard.cli.exec_cmd import exec_template
from moonshard.cli.serve_cmd import serve

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moonshard")
def cli() -> None:
    """moonshard: run tenants' Lua templates on Discord events, sandboxed and durable."""


cli.add_command(exec_template)
cli.add_command(dev)
cli.add_command(bench)
cli.add_command(serve)
for command in client_commands():
    cli.add_command(command)


def main() -> None:
    cli()
