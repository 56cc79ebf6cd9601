"""``moonshard serve`` with secrets in its settings: none of its processes shows one in ``ps``."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import MOONSHARD, free_port

from tests.processes import SECRET, children_of, command_lines, secret_postgres_url

__all__ = ["secret_postgres_url"]

ADMIN_TOKEN = "mst_admin-token-for-this-test-only"


@pytest.fixture
def served_with_secrets(tmp_path: Path, secret_postgres_url: str) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "MOONSHARD_DATABASE_URL": secret_postgres_url,
           "MOONSHARD_ADMIN_TOKEN": ADMIN_TOKEN, "MOONSHARD_TOPOLOGY": "process",
           "MOONSHARD_WORKERS": "2", "MOONSHARD_HOST": "127.0.0.1",
           "MOONSHARD_PORT": str(port)}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*MOONSHARD, "serve"], cwd=tmp_path, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_serve_shows_no_secret_on_any_command_line(served_with_secrets: int) -> None:
    server = served_with_secrets
    workers = children_of(server)
    assert len(workers) >= 2  # its worker processes are running
    lines = command_lines()
    for pid in [server, *workers]:
        assert SECRET not in lines[pid]
        assert ADMIN_TOKEN not in lines[pid]
    assert {pid: line for pid, line in lines.items()
            if SECRET in line or ADMIN_TOKEN in line} == {}
