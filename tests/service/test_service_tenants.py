"""``GET /v1/tenants`` pages and ``moonshard tenant ls / show``."""

from __future__ import annotations

import json
import subprocess

import httpx
from service_support import COUNTER, MOONSHARD, Served, cli_env, new_guild


def run(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOONSHARD, *args], env=cli_env(served), capture_output=True,
                          text=True, timeout=60, check=False)


def test_tenants_page_in_order_without_repeats(served: Served, admin: httpx.Client) -> None:
    mine = sorted(new_guild() for _ in range(3))
    for tenant in mine:
        assert admin.put(f"/v1/tenants/{tenant}/templates/counter",
                         json={"files": {"init.lua": COUNTER}}).status_code == 200
    admin.post(f"/v1/tenants/{mine[0]}/events", json={"name": "FAIL"})
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after is not None:
            params["after"] = after
        page = admin.get("/v1/tenants", params=params).json()
        seen.extend(item["tenant"] for item in page["items"])
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen))
    keys = [(tenant.split(":")[0], tenant.split(":")[1]) for tenant in seen]
    assert keys == sorted(keys)
    assert set(mine) <= set(seen)
    status = admin.get("/v1/tenants", params={"after": mine[0], "limit": 1}).json()
    assert status["items"][0]["tenant"] > mine[0]
    first = admin.get(f"/v1/tenants/{mine[0]}").json()
    assert first["templates"] == ["counter"]
    assert "boom" in first["recent_errors"][-1]["message"]
    assert admin.get("/v1/tenants", params={"after": "nonsense"}).status_code == 422
    token = admin.post("/v1/tokens", json={"tenant": mine[0]}).json()["token"]
    with served.client(token) as client:
        assert client.get("/v1/tenants").status_code == 403
        assert client.get(f"/v1/tenants/{mine[0]}").status_code == 200
    # The CLI follows the pages with --all.
    listed = run(served, "tenant", "ls", "--all", "--limit", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [item["tenant"] for item in json.loads(listed.stdout)["items"]] == seen
    plain = run(served, "tenant", "ls", "--all")
    rows = [line.split("\t") for line in plain.stdout.splitlines()]
    assert rows[0] == ["tenant", "version", "templates", "worker", "vm", "errors"]
    assert [row[0] for row in rows[1:]] == seen
    shown = run(served, "tenant", "show", mine[0])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{mine[0]} (template set version 1)\n")
    assert "templates: counter" in shown.stdout
    assert "boom" in shown.stdout
    as_json = json.loads(run(served, "tenant", "show", mine[0], "--json").stdout)
    assert as_json["tenant"] == mine[0]
    bad = run(served, "tenant", "show", "planet:1")
    assert bad.returncode == 2
