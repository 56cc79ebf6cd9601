"""Helpers of the service suite: a real ``moonshard serve`` subprocess on a free port.

The suite runs on one topology and database, chosen by the environment (``SUITE``):
``MOONSHARD_TEST_TOPOLOGY`` (``thread``, the default; ``process``; ``ray``) and
``MOONSHARD_TEST_DATABASE`` (``sqlite``, the default, or ``postgres``; ``ray`` needs and
implies ``postgres``). The shared server and every server a test starts without naming a
topology use it. On PostgreSQL each server folder has its own schema (a restart in the same
folder finds its data, as with an SQLite file there), dropped when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import asyncpg
import httpx

from moonshard.config import data_folder

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


POSTGRES_URL = os.environ.get(
    "MOONSHARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# The Ray cluster servers of the ray topology join; the suite's fixture starts one (and sets
# this) unless it is given.
RAY_ADDRESS_VARIABLE = "MOONSHARD_TEST_RAY_ADDRESS"


@dataclasses.dataclass(frozen=True)
class Suite:
    """The topology and database the suite's servers run on."""

    topology: str
    database: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Suite:
        topology = env.get("MOONSHARD_TEST_TOPOLOGY") or "thread"
        database = env.get("MOONSHARD_TEST_DATABASE") or (
            "postgres" if topology == "ray" else "sqlite")
        if topology not in ("thread", "process", "ray"):
            raise ValueError(f"MOONSHARD_TEST_TOPOLOGY={topology!r}: thread, process or ray")
        if database not in ("sqlite", "postgres"):
            raise ValueError(f"MOONSHARD_TEST_DATABASE={database!r}: sqlite or postgres")
        if topology == "ray" and database != "postgres":
            raise ValueError("MOONSHARD_TEST_TOPOLOGY=ray needs MOONSHARD_TEST_DATABASE=postgres")
        return cls(topology, database)

    @property
    def is_default(self) -> bool:
        return (self.topology, self.database) == ("thread", "sqlite")

    def topologies(self, *usual: str) -> list[str]:
        """What a test that runs on several topologies runs on: ``usual`` in the default run,
        the suite's topology alone in another (the default run has covered ``usual``)."""
        return list(usual) if self.is_default else [self.topology]

    @property
    def schema_prefix(self) -> str:
        # This session's schemas: the session's end drops them all.
        return f"svc_{os.getpid()}_"

    def database_url(self, folder: Path) -> str:
        """The database of a server started in ``folder``: the same one on every start."""
        if self.database == "sqlite":
            return f"sqlite:///{folder / 'data' / 'moonshard.db'}"
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        return f"{POSTGRES_URL}?schema={self.schema_prefix}{digest}"

    async def drop_schemas(self) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            names = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE left(nspname, $1) = $2",
                len(self.schema_prefix), self.schema_prefix)
            for row in names:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
        finally:
            await conn.close()


SUITE = Suite.from_environment(os.environ)


def drop_suite_schemas() -> None:
    if SUITE.database == "postgres":
        asyncio.run(SUITE.drop_schemas())


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
    database_url: str
    # Where its files are (the admin token's file): the SQLite file's folder, else the
    # ./moonshard-data of its working folder.
    data_folder: Path
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


def start_server(folder: Path, *, topology: str | None = None, workers: int | None = 2,
                 env: Mapping[str, str] | None = None, timeout: float | None = None,
                 own_process_group: bool = False) -> Served:
    """A server in ``folder`` on ``topology`` (the suite's unless named) and the suite's
    database (unless ``env`` names one)."""
    topology = topology or SUITE.topology
    # A Ray worker's actor takes seconds to start on a busy machine.
    timeout = timeout or (120 if topology == "ray" else 60)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ray_address = os.environ.get(RAY_ADDRESS_VARIABLE)
    full_env = {
        **os.environ,
        "MOONSHARD_DATABASE_URL": SUITE.database_url(folder),
        "MOONSHARD_TOPOLOGY": topology,
        **({"MOONSHARD_RAY_ADDRESS": ray_address} if topology == "ray" and ray_address
           else {}),
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
    database_url = full_env["MOONSHARD_DATABASE_URL"]
    files = data_folder(database_url)
    files = files if files.is_absolute() else folder / files
    token = full_env.get("MOONSHARD_ADMIN_TOKEN") or (files / "admin-token").read_text().strip()
    return Served(process, url, folder, database_url, files, token, log)


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
