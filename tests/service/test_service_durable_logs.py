"""Tenant logs in the store: filters over HTTP and the CLI, per-tenant retention, lines
that survive a restart, and follow streams across workers of the process topology."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

from service_support import MOONSHARD, SUITE, Served, cli_env, serving

CHATTY = """
return {
  TALK = function(ctx, event)
    ctx.log("debug", "d", event.data.n)
    print("said", event.data.n)
    ctx.log("warn", "careful", event.data.n)
    return true
  end,
  FAIL = function(ctx, event) error("it broke") end,
}
"""
QUIET = 'return {TALK = function(ctx, event) print("quiet", event.data.n) end}'


def logs_cli(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOONSHARD, "logs", *args], env=cli_env(served),
                          capture_output=True, text=True, timeout=60, check=False)


def tenants_on_each_worker() -> tuple[str, str]:
    """Two guilds that Discord's shard formula puts on worker 0 and worker 1 of two."""
    return f"guild:{(10 << 22) * 2}", f"guild:{(10 << 22) * 2 + (1 << 22)}"


async def follow_lines(served: Served, tenant: str, count: int,
                       connected: asyncio.Event) -> list[str]:
    got: list[str] = []
    async with served.async_client() as client, client.stream(
            "GET", f"/v1/tenants/{tenant}/logs",
            params={"follow": "true", "limit": 0, "level": "info"}) as response:
        connected.set()
        async for line in response.aiter_lines():
            got.append(json.loads(line)["message"])
            if len(got) == count:
                return got
    return got


async def test_logs_are_durable_filtered_and_followed_across_workers(tmp_path: Path) -> None:
    first, second = tenants_on_each_worker()
    env = {"MOONSHARD_LOG_LINES": "9"}
    with serving(tmp_path, topology=SUITE.topologies("process")[0], workers=2,
                 env=env) as served:
        with served.client() as admin:
            for tenant, source in ((first, CHATTY), (second, QUIET)):
                assert admin.put(f"/v1/tenants/{tenant}/templates/talker",
                                 json={"files": {"init.lua": source}}).status_code == 200
            health = admin.get("/healthz").json()["workers"]
            assert len(health) == 2
            connected = [asyncio.Event(), asyncio.Event()]
            followers = [asyncio.create_task(follow_lines(served, tenant, 2, ready))
                         for tenant, ready in zip((first, second), connected, strict=True)]
            await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in connected)), 30)
            await asyncio.sleep(0.3)
            before_talk = time.time()
            for n in (1, 2):
                for tenant in (first, second):
                    answer = admin.post(f"/v1/tenants/{tenant}/events",
                                        json={"name": "TALK", "data": {"n": n}})
                    assert answer.status_code == 200, answer.text
            followed = await asyncio.wait_for(asyncio.gather(*followers), 30)
            # Each follower saw its own tenant's info-or-worse lines, from its own worker.
            assert followed[0] == ["said\t1", "careful\t1"]
            assert followed[1] == ["quiet\t1", "quiet\t2"]
            admin.post(f"/v1/tenants/{first}/events", json={"name": "FAIL"})
            warn_up = admin.get(f"/v1/tenants/{first}/logs", params={"level": "warn"}).text
            levels = [json.loads(line)["level"] for line in warn_up.splitlines()]
            assert levels == ["warn", "warn", "error"]
            since = admin.get(f"/v1/tenants/{second}/logs",
                              params={"since": repr(before_talk)}).text
            assert [json.loads(line)["message"] for line in since.splitlines()] == [
                "quiet\t1", "quiet\t2"]
            later = admin.get(f"/v1/tenants/{second}/logs",
                              params={"since": repr(time.time() + 60)}).text
            assert later == ""
            by_template = admin.get(f"/v1/tenants/{first}/logs",
                                    params={"template": "nope"}).text
            assert by_template == ""
            refused = admin.get(f"/v1/tenants/{first}/logs", params={"level": "loud"})
            assert refused.status_code == 422
            errors = admin.get(f"/v1/tenants/{first}").json()["recent_errors"]
            assert "it broke" in errors[-1]["message"]
        # The CLI: the same filters, exact lines when piped.
        shown = logs_cli(served, "--tenant", first, "--level", "warn", "--since", "1h",
                         "--template", "talker", "--json")
        assert shown.returncode == 0, shown.stderr
        assert [json.loads(line)["level"] for line in shown.stdout.splitlines()] == [
            "warn", "warn", "error"]
        bad = logs_cli(served, "--tenant", first, "--since", "yesterday-ish")
        assert bad.returncode == 2
        assert served.stop() == 0
    # Retention: 9 lines per tenant (3 per TALK, then the error and its note).
    with serving(tmp_path, topology=SUITE.topologies("thread")[0], workers=1,
                 env=env) as again:
        with again.client() as admin:
            kept = admin.get(f"/v1/tenants/{first}/logs", params={"limit": 1000}).text
            messages = [json.loads(line)["message"] for line in kept.splitlines()]
            assert len(messages) <= 9
            assert "careful\t2" in messages
            quiet = admin.get(f"/v1/tenants/{second}/logs").text
            assert [json.loads(line)["message"] for line in quiet.splitlines()] == [
                "quiet\t1", "quiet\t2"]
        plain = logs_cli(again, "--tenant", second)
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout.splitlines()[-1].endswith("[info] talker: quiet\t2")
        assert again.stop() == 0
