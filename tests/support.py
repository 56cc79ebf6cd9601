"""Helpers shared by the engine-level suites."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg

from moonshard.tenants import TenantId

POSTGRES_URL = os.environ.get(
    "MOONSHARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Logs:
    """A tenant log sink that keeps every line (thread-safe enough: list.append)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str, str]] = []

    def __call__(self, tenant: TenantId, level: str, template: str, message: str) -> None:
        self.lines.append((str(tenant), level, template, message))

    def messages(self, containing: str = "") -> list[str]:
        return [line[3] for line in self.lines if containing in line[3]]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0,
                     every: float = 0.05) -> None:
    """Waits until ``check`` is true; fails the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within} s")
        await asyncio.sleep(every)


async def database_urls(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh SQLite file, or a fresh PostgreSQL schema (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'moonshard.db'}"
        return
    schema = "t_" + uuid.uuid4().hex[:16]
    yield f"{POSTGRES_URL}?schema={schema}"
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
