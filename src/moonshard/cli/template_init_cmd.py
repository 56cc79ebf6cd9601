"""``moonshard template init``: a new template folder with a starter and editor types."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from moonshard.authoring import StarterFolderError, write_starter

__all__ = ["template_init"]


@click.command("init")
@click.argument("folder", type=click.Path(path_type=Path))
def template_init(folder: Path) -> None:
    """Create FOLDER with a starter init.lua, sample events and Lua language server types.

    Open FOLDER in VS Code (with the Lua extension) or Neovim (with lua_ls) for completion and
    type checks of ctx, event and the built-in libraries.
    """
    try:
        written = write_starter(folder)
    except StarterFolderError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"created {folder} with {len(written)} files. Try it:")
    click.echo(f"  moonshard exec {folder} --event MESSAGE_CREATE "
               f"--data @{folder / 'events' / 'MESSAGE_CREATE.json'}")
    click.echo(f"  moonshard dev {folder}    (reloads on save; type MESSAGE_CREATE)")
