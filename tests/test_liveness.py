"""Liveness of worker processes: a frozen worker is replaced, a worker outlives no parent, and
no secret is on a command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from moonshard import Engine, Event, TenantId
from moonshard.topology.process import Liveness
from tests.processes import SECRET, alive, children_of, command_lines, secret_postgres_url

__all__ = ["secret_postgres_url"]  # a fixture of this module

A, B = TenantId.guild(1), TenantId.guild(2)  # both on worker 0 of 1

COUNTER = """
n = 0
return {COUNT = function() n = n + 1; return n end}
"""


async def until(condition: object, what: str) -> None:
    """Polls ``condition()`` (no timing is asserted: 60 s is only a hang guard)."""
    async def poll() -> None:
        while True:
            if condition():  # type: ignore[operator]
                return
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(poll(), 60)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def test_a_frozen_worker_process_is_replaced(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'live.db'}", topology="process", workers=1,
                           liveness=Liveness(interval=0.2, deadline=2.0)) as engine:
        for tenant in (A, B):
            await engine.templates.put(tenant, "counter", {"init.lua": COUNTER})
        assert (await engine.dispatch(A, Event("COUNT")))[0].value == 1
        slot = engine.pool.workers[0]
        frozen = slot.health()["pid"]
        os.kill(frozen, signal.SIGSTOP)  # its event loop stops answering, its socket stays open
        try:
            # Sent to the frozen worker, never started there: the successor runs it.
            assert (await engine.dispatch(B, Event("COUNT")))[0].value == 1
            assert slot.health()["pid"] != frozen
            assert "stopped answering" in str(slot.last_exit)
            assert not alive(frozen)
            assert (await engine.dispatch(A, Event("COUNT")))[0].value == 1  # a fresh VM
        finally:
            if alive(frozen):
                os.kill(frozen, signal.SIGKILL)


PARENT = """
import asyncio, os, sys
from moonshard import Engine

async def main():
    async with Engine.open(os.environ["TEST_DATABASE_URL"], topology="process", workers=2) as e:
        print(" ".join(str(w.health()["pid"]) for w in e.pool.workers), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_no_secret_on_a_command_line_and_workers_end_with_their_parent(
        secret_postgres_url: str) -> None:
    # The URL reaches the parent through its environment, as MOONSHARD_DATABASE_URL would.
    workers: list[int] = []
    parent = subprocess.Popen(  # noqa: ASYNC220 - started once, then only polled
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
        env={**os.environ, "TEST_DATABASE_URL": secret_postgres_url})
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 60)
        workers.extend(int(pid) for pid in line.split())
        assert len(workers) == 2
        assert sorted(children_of(parent.pid)) == sorted(workers)
        leaks = {pid: line for pid, line in command_lines().items() if SECRET in line}
        assert leaks == {}
        # A stopped worker cannot read the end of its socket: only the kernel's parent-death
        # signal can end it.
        os.kill(workers[0], signal.SIGSTOP)
        parent.kill()  # SIGKILL: the parent cannot tell its workers anything
        parent.wait()
        await until(lambda: not any(alive(pid) for pid in workers),
                    "the workers ended with their parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)



async def test_a_cancelled_owner_ends_its_worker_process_instead_of_waiting(
    tmp_path: Path,
) -> None:
    # An owner whose loop closes cancels what is left (a test that failed half-way, say): the
    # handle's reader then ends the child, which nobody told to stop, rather than waiting
    # for it forever.
    from moonshard.contracts.worker import WorkerConfig
    from moonshard.topology.process import ProcessWorker

    handle = ProcessWorker(WorkerConfig(0, f"sqlite:///{tmp_path / 'w.db'}"),
                           lambda *line: None)
    await handle.start()
    pid = handle.pid
    assert pid is not None
    reader, heartbeat = handle._reader_task, handle._heartbeat_task
    assert reader is not None
    assert heartbeat is not None
    heartbeat.cancel()  # a closing loop cancels every task, the heartbeat's too
    reader.cancel()
    done, _ = await asyncio.wait({reader}, timeout=30)  # a hang guard only
    assert done, "the cancelled reader waited for a child nobody stopped"
    await until(lambda: not alive(pid), "the worker process to end")
