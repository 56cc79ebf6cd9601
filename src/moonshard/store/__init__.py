"""Persistence: ``open_store(database_url)`` gives the SQLite or PostgreSQL ``Store``."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from moonshard.store.api import Store

__all__ = ["Store", "open_store", "sqlite_path"]

_SQLITE_OPTIONS = ("busy_timeout", "readers", "synchronous")


async def open_store(database_url: str) -> Store:
    """Opens (creating and migrating as needed) the store that ``database_url`` names.

    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; options
      ``?synchronous=normal|full``, ``?busy_timeout=SECONDS`` and ``?readers=N`` (reading
      connections, each with its thread). The folder is created.
    - ``postgresql://user@host:port/db`` (or ``postgres://``); ``?schema=NAME`` puts every
      table in that schema (created if missing), other options go to asyncpg.
    """
    scheme, colon, _ = database_url.partition(":")
    scheme = scheme.lower()
    if scheme == "sqlite":
        from moonshard.store.sqlite import SqliteStore  # noqa: PLC0415 - load what is used

        path, options = sqlite_path(database_url)
        return await SqliteStore.open(
            path, busy_timeout=float(options.get("busy_timeout", "10")),
            synchronous=options.get("synchronous", "normal"),
            readers=int(options.get("readers", "2")))
    if scheme in ("postgresql", "postgres"):
        from moonshard.store.postgres import PostgresStore  # noqa: PLC0415 - asyncpg only here

        return await PostgresStore.open_url(database_url)
    # Only the scheme is echoed: the rest of a URL may hold a password.
    problem = (f"unsupported DATABASE_URL scheme {scheme!r}" if colon
               else "DATABASE_URL has no scheme")
    raise ValueError(
        f"{problem}: use sqlite:///PATH (for example sqlite:///./moonshard-data/moonshard.db) "
        "or postgresql://USER@HOST:PORT/DATABASE")


def sqlite_path(database_url: str) -> tuple[Path, dict[str, str]]:
    """The file path and options of a ``sqlite:///PATH`` URL (four slashes: absolute path)."""
    parsed = urllib.parse.urlsplit(database_url)
    if parsed.netloc or not parsed.path.startswith("/") or parsed.path == "/":
        raise ValueError(
            f"bad SQLite URL {database_url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db")
    raw = urllib.parse.unquote(parsed.path[1:])
    if raw == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared by workers; use a file")
    options = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_SQLITE_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown SQLite URL option {unknown[0]!r} (known: {', '.join(_SQLITE_OPTIONS)})")
    return Path(raw), options
