"""Fixtures of the service suite: one shared server (thread topology) for most tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from service_support import COUNTER, Served, new_guild, start_server


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("served"))
    yield server
    code = server.stop()
    output = server.output()
    assert code == 0, output
    # Bad input must never reach an unexpected error: the server logs those with a traceback.
    assert "Traceback" not in output, output


@pytest.fixture
def admin(served: Served) -> Iterator[httpx.Client]:
    with served.client() as client:
        yield client


@pytest.fixture
def tenant() -> str:
    return new_guild()


@pytest.fixture
def counter_tenant(admin: httpx.Client) -> str:
    """A fresh tenant with the COUNTER template saved."""
    tenant = new_guild()
    response = admin.put(f"/v1/tenants/{tenant}/templates/counter",
                         json={"files": {"init.lua": COUNTER}})
    assert response.status_code == 200, response.text
    return tenant
