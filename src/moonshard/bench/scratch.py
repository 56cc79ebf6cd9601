"""Throwaway databases for the benchmarks: a temporary SQLite file, or a PostgreSQL schema."""

from __future__ import annotations

import contextlib
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

__all__ = ["is_postgres", "scratch_postgres", "scratch_sqlite", "sqlite_url"]


def sqlite_url(path: Path) -> str:
    """The store URL of an SQLite file (``sqlite:////absolute/path``)."""
    return f"sqlite:///{path.resolve()}"


def is_postgres(database_url: str) -> bool:
    return database_url.partition(":")[0].lower() in ("postgresql", "postgres")


@contextlib.contextmanager
def scratch_sqlite(name: str = "bench.db") -> Iterator[str]:
    """The URL of a new SQLite file in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="moonshard-bench-") as folder:
        yield sqlite_url(Path(folder) / name)


@contextlib.asynccontextmanager
async def scratch_postgres(database_url: str) -> AsyncIterator[str]:
    """``database_url`` with a fresh ``schema=bench_<random>``, dropped afterwards.

    A URL that already names a schema is used as given and its schema is kept: it is the
    caller's.
    """
    import asyncpg  # noqa: PLC0415 - only PostgreSQL runs need it

    from moonshard.store.postgres import split_schema  # noqa: PLC0415 - asyncpg only here

    dsn, schema = split_schema(database_url)
    if schema is not None:
        yield database_url
        return
    schema = "bench_" + uuid.uuid4().hex[:12]
    parsed = urllib.parse.urlsplit(database_url)
    query = "&".join(part for part in (parsed.query, f"schema={schema}") if part)
    try:
        yield urllib.parse.urlunsplit(parsed._replace(query=query))
    finally:
        # The store has no call that removes a whole schema: this cleanup is the one piece of
        # SQL outside the store, as in the test suite's fixture.
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
