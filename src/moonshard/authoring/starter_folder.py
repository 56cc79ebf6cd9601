"""``moonshard template init``'s work: a new template folder set up for the Lua language server."""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType

from moonshard.errors import MoonshardError

__all__ = ["StarterFolderError", "type_definitions", "write_starter"]

# Hidden, so that exec and push leave it out of the template (they skip dot-folders).
TYPES_FOLDER = ".types"

def _luarc() -> dict[str, object]:
    """LuaLS settings: Lua 5.4, our definitions, and the standard libraries templates lack
    turned off ("basic" and "os" are defined again in .types/moonshard.lua as templates have
    them)."""
    return {
        "runtime": {
            "version": "Lua 5.4",
            "builtin": {"basic": "disable", "io": "disable", "os": "disable",
                        "debug": "disable", "package": "disable"},
        },
        "workspace": {"library": [TYPES_FOLDER], "checkThirdParty": False},
    }


class StarterFolderError(MoonshardError):
    """The starter folder cannot be written where the author asked."""


def _package_folder(name: str) -> Traversable:
    return importlib.resources.files("moonshard.authoring") / name


def _lua_files(folder: Traversable) -> dict[str, str]:
    return {entry.name: entry.read_text(encoding="utf-8")
            for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
            if entry.name.endswith(".lua")}


def type_definitions() -> Mapping[str, str]:
    """The LuaLS ``---@meta`` files of the template API, as file name -> text."""
    return MappingProxyType(_lua_files(_package_folder("types")))


def _starter_files() -> dict[str, str]:
    starter = _package_folder("starter")
    files = {"init.lua": (starter / "init.lua").read_text(encoding="utf-8"),
             ".luarc.json": json.dumps(_luarc(), indent=2) + "\n"}
    for entry in sorted((starter / "events").iterdir(), key=lambda entry: entry.name):
        if entry.name.endswith(".json"):
            files[f"events/{entry.name}"] = entry.read_text(encoding="utf-8")
    for name, text in type_definitions().items():
        files[f"{TYPES_FOLDER}/{name}"] = text
    return files


def write_starter(folder: Path) -> list[Path]:
    """Writes a starter template into ``folder`` (new or empty); returns the files written."""
    if folder.exists() and not folder.is_dir():
        raise StarterFolderError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise StarterFolderError(
            f"{folder} already exists and is not empty; choose a new folder name")
    files = _starter_files()
    name = folder.resolve().name
    written = []
    try:
        for relative, text in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.replace("NAME", name) if relative == "init.lua" else text,
                            encoding="utf-8")
            written.append(path)
    except OSError as error:
        raise StarterFolderError(f"cannot write {folder}: {error.strerror}") from None
    return written
