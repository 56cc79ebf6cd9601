"""Helpers of the service suite: a real ``moonshard serve`` subprocess on a free port."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
MOONSHARD = [str(BIN / "moonshard")] if (BIN / "moonshard").exists() else \
    [sys.executable, "-m", "moonshard"]

COUNTER = """
return {
  COUNT = function(ctx, event)
    local n = ctx.kv.incr("count")
    print("counted", n)
    return {n = n}
  end,
  WRITE = function(ctx, event)
    ctx.kv.set(event.data.key, event.data.value)
    return event.data.key
  end,
  FAIL = function(ctx, event) error("boom") end,
  SLOW = function(ctx, event)
    local until_ = os.clock() + (event.data.seconds or 0.2)
    while os.clock() < until_ do end
    ctx.kv.set(event.data.key, true)
    return "slow"
  end,
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_guild() -> str:
    """A fresh tenant, so tests sharing a server never see each other's data."""
    return f"guild:{random.randrange(10**15, 10**18)}"


@dataclasses.dataclass
class Served:
    """A running ``moonshard serve`` and how to talk to it."""

    process: subprocess.Popen[bytes]
    url: str
    folder: Path
    database: Path
    admin_token: str
    log: Path

    def client(self, token: str | None = "admin", **kwargs: object) -> httpx.Client:
        headers = {}
        if token == "admin":
            token = self.admin_token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def async_client(self, token: str | None = "admin") -> httpx.AsyncClient:
        token = self.admin_token if token == "admin" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def cli_env(served: Served, **extra: str) -> dict[str, str]:
    return {**os.environ, "MOONSHARD_URL": served.url, "MOONSHARD_TOKEN": served.admin_token,
            "COLUMNS": "200", **extra}


def start_server(folder: Path, *, topology: str = "thread", workers: int | None = 2,
                 env: Mapping[str, str] | None = None, timeout: float = 60,
                 own_process_group: bool = False) -> Served:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database = folder / "data" / "moonshard.db"
    full_env = {
        **os.environ,
        "MOONSHARD_DATABASE_URL": f"sqlite:///{database}",
        "MOONSHARD_TOPOLOGY": topology,
        **({"MOONSHARD_WORKERS": str(workers)} if workers is not None else {}),
        "MOONSHARD_HOST": "127.0.0.1",
        "MOONSHARD_PORT": str(port),
        "MOONSHARD_CPU_LIMIT": "2",
        **(env or {}),
    }
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*MOONSHARD, "serve"], cwd=folder, env=full_env,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=own_process_group)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moonshard serve exited ({process.returncode}):\n"
                               f"{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"moonshard serve did not start:\n{log.read_text()}")
        time.sleep(0.1)
    token = full_env.get("MOONSHARD_ADMIN_TOKEN") or \
        (database.parent / "admin-token").read_text().strip()
    return Served(process, url, folder, database, token, log)


@contextlib.contextmanager
def serving(folder: Path, **options: object) -> Iterator[Served]:
    """``start_server`` for a ``with`` block: a server the block left running is killed, so a
    failing test leaves no process behind."""
    served = start_server(folder, **options)  # type: ignore[arg-type]
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()
