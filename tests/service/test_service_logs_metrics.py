"""Log follow streams and the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import json

import httpx
from prometheus_client.parser import text_string_to_metric_families
from service_support import Served


async def test_follow_receives_a_line_written_after_it_connected(
    served: Served, counter_tenant: str,
) -> None:
    async with served.async_client() as client:
        await client.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "COUNT"})
        lines: list[dict[str, object]] = []
        connected = asyncio.Event()

        async def follow() -> None:
            async with client.stream("GET", f"/v1/tenants/{counter_tenant}/logs",
                                     params={"follow": "true", "limit": 10}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("application/x-ndjson")
                connected.set()
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 3:
                        return

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(0.2)
        for _ in range(2):
            await client.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "COUNT"})
        await asyncio.wait_for(follower, 10)
    # The backlog line first, then the two written while following.
    assert [line["message"] for line in lines] == ["counted\t1", "counted\t2", "counted\t3"]


async def test_follow_sees_only_its_own_tenant(served: Served, counter_tenant: str,
                                               tenant: str) -> None:
    async with served.async_client() as client:
        await client.put(f"/v1/tenants/{tenant}/templates/p", json={
            "files": {"init.lua": 'return {P = function() print("other tenant") end}'}})
        got: list[str] = []

        async def follow() -> None:
            async with client.stream("GET", f"/v1/tenants/{counter_tenant}/logs",
                                     params={"follow": "true", "limit": 0}) as response:
                async for line in response.aiter_lines():
                    got.append(json.loads(line)["message"])
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.3)
        await client.post(f"/v1/tenants/{tenant}/events", json={"name": "P"})
        await client.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "COUNT"})
        await asyncio.wait_for(follower, 10)
    assert got == ["counted\t1"]


def test_metrics(served: Served, admin: httpx.Client, counter_tenant: str) -> None:
    admin.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "COUNT"})
    admin.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "FAIL"})
    admin.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "UNHANDLED"})
    admin.post("/v1/gateway", json={"t": "READY", "d": {}})
    response = httpx.get(f"{served.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in
                text_string_to_metric_families(response.text)}

    def value(name: str, sample: str, **labels: str) -> float:
        for item in families[name].samples:
            if item.name == sample and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
        raise AssertionError(f"no sample {sample} {labels}")

    assert value("moonshard_dispatches", "moonshard_dispatches_total", outcome="ok") >= 1
    assert value("moonshard_dispatches", "moonshard_dispatches_total",
                 outcome="handler_error") >= 1
    assert value("moonshard_dispatches", "moonshard_dispatches_total",
                 outcome="no_subscriber") >= 1
    assert value("moonshard_events_dropped", "moonshard_events_dropped_total",
                 reason="no_tenant") >= 1
    assert value("moonshard_dispatch_seconds", "moonshard_dispatch_seconds_count") >= 3
    assert value("moonshard_timer_lateness_seconds",
                 "moonshard_timer_lateness_seconds_count") >= 0
    for worker in ("0", "1"):
        assert value("moonshard_worker_up", "moonshard_worker_up", worker=worker) == 1
        assert value("moonshard_worker_restarts", "moonshard_worker_restarts_total",
                     worker=worker) == 0
        assert value("moonshard_queue_depth", "moonshard_queue_depth", worker=worker) >= 0
        assert value("moonshard_timers_held", "moonshard_timers_held", worker=worker) >= 0
        assert value("moonshard_timers_fired", "moonshard_timers_fired_total",
                     worker=worker) >= 0
    assert sum(value("moonshard_resident_vms", "moonshard_resident_vms", worker=w)
               for w in ("0", "1")) >= 1
    assert sum(value("moonshard_vm_memory_bytes", "moonshard_vm_memory_bytes", worker=w)
               for w in ("0", "1")) > 0
    assert value("moonshard_background_dispatches", "moonshard_background_dispatches") >= 0
    assert value("moonshard_http_requests", "moonshard_http_requests_total", method="POST",
                 route="/v1/tenants/{tenant}/events", status="200") >= 3
