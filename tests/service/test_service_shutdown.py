"""The process topology: an orderly stop under load loses nothing that was acknowledged;
a worker killed mid-event answers 503, and a tenant that keeps doing it 429."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from service_support import COUNTER, SUITE, Served, new_guild, serving

from moonshard.store import open_store
from moonshard.tenants import TenantId


async def run_load(served: Served, tenants: list[str], acknowledged: list[tuple[str, str]],
                   stop: asyncio.Event, worker: int) -> None:
    """Sends writes (awaited and not) until the server stops answering."""
    async with served.async_client() as client:
        for number in range(10_000):
            # Events of one tenant run one at a time: spread the loops over the tenants.
            tenant = tenants[(number + worker) % len(tenants)]
            key = f"w{worker}-{number}"
            # Alternate slow awaited writes, quick awaited writes and queued writes.
            kind = number % 3
            body = {"name": "SLOW" if kind == 0 else "WRITE",
                    "data": {"key": key, "value": number, "seconds": 0.05}}
            try:
                response = await client.post(f"/v1/tenants/{tenant}/events", json=body,
                                             params={"wait": "false" if kind == 2 else "true"})
            except httpx.HTTPError:
                return  # refused or cut: not acknowledged, so it may be lost
            if response.status_code == 202 or (
                    response.status_code == 200 and response.json()["results"][0]["ok"]):
                acknowledged.append((tenant, key))
            elif stop.is_set() and response.status_code >= 500:
                return
            else:
                raise AssertionError(f"unexpected answer {response.status_code}: "
                                     f"{response.text}")


async def follow_until_closed(served: Served, tenant: str) -> int:
    """Follows the tenant's log until the server ends the stream; returns the lines seen."""
    lines = 0
    async with served.async_client() as client, client.stream(
            "GET", f"/v1/tenants/{tenant}/logs", params={"follow": "true"}) as response:
        async for _ in response.aiter_lines():
            lines += 1
    return lines


async def missing_writes(database_url: str, acknowledged: list[tuple[str, str]]) -> list[str]:
    missing = []
    async with await open_store(database_url) as store:
        for tenant, key in acknowledged:
            record = await store.kv.get(TenantId.parse(tenant), "default", key, now=time.time())
            if record is None:
                missing.append(f"{tenant} {key}")
    return missing


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c-to-the-process-group"])
async def test_stop_under_load_loses_no_acknowledged_write(tmp_path: Path, how: str) -> None:
    with serving(tmp_path, topology=SUITE.topologies("process")[0], workers=2,
                 env={"MOONSHARD_STOP_DEADLINE": "20"}, own_process_group=True) as served:
        await load_and_stop(served, how)


async def load_and_stop(served: Served, how: str) -> None:
    tenants = [new_guild() for _ in range(8)]
    with served.client() as admin:
        for tenant in tenants:
            assert admin.put(f"/v1/tenants/{tenant}/templates/counter",
                             json={"files": {"init.lua": COUNTER}}).status_code == 200
    acknowledged: list[tuple[str, str]] = []
    stop = asyncio.Event()
    follower = asyncio.create_task(follow_until_closed(served, tenants[0]))
    load = [asyncio.create_task(run_load(served, tenants, acknowledged, stop, worker))
            for worker in range(12)]
    started = time.monotonic()
    while len(acknowledged) < 40:
        assert time.monotonic() - started < 30, "the load did not get going"
        await asyncio.sleep(0.05)
    stop.set()
    if how == "sigterm":
        served.process.send_signal(signal.SIGTERM)
    else:
        # What a terminal's Ctrl-C does: SIGINT to the server and its worker processes.
        os.killpg(os.getpgid(served.process.pid), signal.SIGINT)
    await asyncio.wait_for(asyncio.gather(*load), 60)
    # The stop ends follow streams instead of waiting on them.
    assert await asyncio.wait_for(follower, 20) >= 0
    code = await asyncio.to_thread(served.process.wait, 60)
    output = served.output()
    assert code == 0, output
    assert "stopped" in output
    assert "Traceback" not in output, output
    assert await missing_writes(served.database_url, acknowledged) == []


STUCK_IN_C = """
return {STUCK = function() return string.rep("a", 400000):find("a-b") end,
        OK = function() return "ok" end}
"""


def test_a_worker_killed_mid_event_is_503_then_the_tenant_is_429(tmp_path: Path) -> None:
    """A call stuck in C kills its worker process: the running event answers 503
    worker_crashed; a tenant that does it twice is quarantined, 429 with Retry-After."""
    with serving(tmp_path, topology=SUITE.topologies("process")[0], workers=1,
                 # A raised pattern guard lets a call get stuck in C (the last resort's case).
                 env={"MOONSHARD_CPU_LIMIT": "0.5",
                      "MOONSHARD_PATTERN_STEPS": "10000000000000"}) as served:
        tenant, bystander = new_guild(), new_guild()
        with served.client() as admin:
            for owner in (tenant, bystander):
                assert admin.put(f"/v1/tenants/{owner}/templates/stuck",
                                 json={"files": {"init.lua": STUCK_IN_C}}).status_code == 200
            for _ in range(2):
                crashed = admin.post(f"/v1/tenants/{tenant}/events", json={"name": "STUCK"})
                assert crashed.status_code == 503, crashed.text
                assert crashed.json()["error"]["code"] == "worker_crashed"
            refused = admin.post(f"/v1/tenants/{tenant}/events", json={"name": "OK"})
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "tenant_quarantined"
            assert int(refused.headers["Retry-After"]) > 0
            # The worker was restarted; other tenants go on.
            fine = admin.post(f"/v1/tenants/{bystander}/events", json={"name": "OK"})
            assert fine.json()["results"] == [{"template": "stuck", "ok": True, "value": "ok"}]
            restarts = [worker["restarts"] for worker in
                        httpx.get(f"{served.url}/healthz").json()["workers"]]
            assert restarts == [2]
        assert served.stop() == 0
