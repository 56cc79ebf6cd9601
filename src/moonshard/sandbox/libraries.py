"""The built-in Lua libraries templates load with ``require("@moonshard/<name>")``."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["BUILTIN_LIBRARY_SOURCES", "read_library_sources"]


def read_library_sources() -> Mapping[str, str]:
    """Every ``sandbox/lua/lib/<name>.lua`` of the package, as name -> source."""
    folder = importlib.resources.files("moonshard.sandbox") / "lua" / "lib"
    return MappingProxyType({
        entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".lua")
    })


# Read once at import: the files are part of the package and never change while it runs.
BUILTIN_LIBRARY_SOURCES: Mapping[str, str] = read_library_sources()
