"""Fixtures of the store suite: every test runs against SQLite and against PostgreSQL.

PostgreSQL is required, never skipped: a missing server fails the suite. Each PostgreSQL test
gets a fresh schema, dropped afterwards. ``MOONSHARD_TEST_POSTGRES_URL`` overrides the server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_support import POSTGRES_URL, FakeClock, SessionFactory, drop_schema

from moonshard.host.kv import KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.limits import Limits
from moonshard.store import open_store
from moonshard.store.api import Store
from moonshard.tenants import TenantId


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL naming an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'store.db'}"
        return
    schema = "t_" + uuid.uuid4().hex[:16]
    yield f"{POSTGRES_URL}?schema={schema}"
    await drop_schema(schema)


@pytest.fixture
def dialect(store_url: str) -> str:
    return "sqlite" if store_url.startswith("sqlite") else "postgres"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def tenant() -> TenantId:
    return TenantId.guild(4242)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def session(store: Store, tenant: TenantId, clock: FakeClock) -> SessionFactory:
    """Builds a KVSession on the store: unlimited rate, default limits, the fake clock."""

    def make(
        *, for_tenant: TenantId | None = None, limits: Limits | None = None,
        limiter: GcraLimiter | None = None,
    ) -> KVSession:
        return KVSession(store.kv, for_tenant or tenant, limits or Limits(),
                         limiter or GcraLimiter({}), clock)

    return make
