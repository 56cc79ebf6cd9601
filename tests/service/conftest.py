"""Fixtures of the service suite: one shared server (the suite's topology, see
``service_support.SUITE``) for most tests, and for the ray topology one Ray for them all."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import (
    COUNTER,
    RAY_ADDRESS_VARIABLE,
    SUITE,
    Served,
    drop_suite_schemas,
    free_port,
    new_guild,
    start_server,
)


@pytest.fixture(scope="session", autouse=True)
def suite_services() -> Iterator[None]:
    """What the suite's servers share: a Ray head for the ray topology (one for the session,
    not one per server), and the session's PostgreSQL schemas, dropped at its end."""
    try:
        if SUITE.topology == "ray" and not os.environ.get(RAY_ADDRESS_VARIABLE):
            with pytest.MonkeyPatch.context() as patch, ray_head(patch) as address:
                patch.setenv(RAY_ADDRESS_VARIABLE, address)
                yield
        else:
            yield
    finally:
        drop_suite_schemas()


@contextlib.contextmanager
def ray_head(patch: pytest.MonkeyPatch) -> Iterator[str]:
    """``ray start --head`` on a free port with its own temporary folder and its own token;
    ended by its own pid and process group (never ``ray stop``, which ends every Ray of the
    user). ``patch`` gives the token to the servers this session starts."""
    temp = Path(tempfile.mkdtemp(prefix="msray-", dir="/tmp"))  # short: socket paths
    # Not ~/.ray/auth_token: any other Ray started on the machine rewrites that one, and this
    # cluster would refuse its servers.
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    patch.setenv("RAY_AUTH_MODE", "token")
    patch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    port = free_port()
    log = temp / "head.log"
    ray = Path(sys.executable).parent / "ray"
    # The CPUs are Ray's scheduling tokens only: room for the few servers alive at once.
    command = [str(ray), "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--num-cpus=12",
               f"--object-store-memory={100 * 1024 * 1024}", "--include-dashboard=false",
               "--disable-usage-stats"]
    with log.open("wb") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert head.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        # Whatever of its processes is left (they share its session, so its group).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


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
