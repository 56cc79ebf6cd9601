"""Persistence: ``open_store(database_url)`` gives the SQLite or PostgreSQL ``Store``."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from moonshard.errors import MoonshardError, StoreUnavailable
from moonshard.store.api import Store

__all__ = ["Store", "open_store", "safe_url", "sqlite_path"]

_N = TypeVar("_N", int, float)
_SQLITE_OPTIONS = ("busy_timeout", "readers", "synchronous")


async def open_store(database_url: str) -> Store:
    """Opens (creating and migrating as needed) the store that ``database_url`` names.

    Raises ``StoreUnavailable`` (one line naming the database and the cause) when it cannot
    be opened or reached, ``ValueError`` for a URL that is not valid, ``SchemaError`` for a
    database newer than this code.
    """
    try:
        return await _open_store(database_url)
    except (MoonshardError, ValueError):
        raise
    except Exception as error:
        raise StoreUnavailable(
            f"cannot open the database {safe_url(database_url)}: {_cause(error)}") from None


def safe_url(url: str) -> str:
    """``url`` without its user and password: what may be shown in a log line."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower().startswith("sqlite"):
        return url
    location, slash, tail = rest.partition("/")
    host = location.rpartition("@")[2]
    # The query may carry a password too (?password=...): keep only the path.
    return f"{scheme}://{host}{slash}{tail.partition('?')[0]}"


def _cause(error: BaseException) -> str:
    """The reason a database could not be opened, in a few words."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "timed out connecting"
    if isinstance(error, OSError):
        if error.errno == errno.ECONNREFUSED or isinstance(error, ConnectionRefusedError):
            return "connection refused (is the server running, on that host and port?)"
        if error.errno in (errno.EEXIST, errno.ENOTDIR):
            name = error.filename if error.filename is not None else "a part of the path"
            return f"{name} is not a folder"
        if type(error).__name__ == "gaierror" or error.errno in (-2, -3, -5):
            return f"unknown host ({error.strerror or error})"
        reason = error.strerror or str(error) or type(error).__name__
        return f"{reason}: {error.filename}" if error.filename else reason
    if isinstance(error, sqlite3.Error):
        text = str(error)
        if "unable to open database file" in text:
            return "unable to open the database file (is the path a folder, or not writable?)"
        if "file is not a database" in text:
            return "the file is not an SQLite database"
        return text
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text or type(error).__name__


async def _open_store(database_url: str) -> Store:
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
            path, busy_timeout=_option(options, "busy_timeout", "10", float),
            synchronous=options.get("synchronous", "normal"),
            readers=_option(options, "readers", "2", int))
    if scheme in ("postgresql", "postgres"):
        from moonshard.store.postgres import PostgresStore  # noqa: PLC0415 - asyncpg only here

        return await PostgresStore.open_url(database_url)
    # Only the scheme is echoed: the rest of a URL may hold a password.
    problem = (f"unsupported DATABASE_URL scheme {scheme!r}" if colon
               else "DATABASE_URL has no scheme")
    raise ValueError(
        f"{problem}: use sqlite:///PATH (for example sqlite:///./moonshard-data/moonshard.db) "
        "or postgresql://USER@HOST:PORT/DATABASE")


def _option(options: dict[str, str], name: str, default: str,
            kind: Callable[[str], _N]) -> _N:
    text = options.get(name, default)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"SQLite URL option {name}={text!r} is not a number") from None


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
