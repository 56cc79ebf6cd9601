"""Hostile templates through a real ``moonshard serve``: every probe of the battery holds, and
none can make the service answer 500 or stop answering other tenants."""

from __future__ import annotations

import httpx
from service_support import new_guild

from tests.test_sandbox_hostile import ESCAPES, FORGERIES


def test_escape_probes_and_forgeries_hold_over_http(admin: httpx.Client) -> None:
    tenant, bystander = new_guild(), new_guild()
    probes = {**ESCAPES, **{f"forged: {name}": body for name, body in FORGERIES.items()}}
    handlers = ",\n".join(f"P{index} = function(ctx, event)\n{body}\nend"
                          for index, body in enumerate(probes.values()))
    saved = admin.put(f"/v1/tenants/{tenant}/templates/probes",
                      json={"files": {"init.lua": f"return {{\n{handlers},\n"
                                                  "PING = function() return 'pong' end}"}})
    assert saved.status_code == 200, saved.text
    admin.put(f"/v1/tenants/{bystander}/templates/ping", json={"files": {
        "init.lua": "return {PING = function() return 'pong' end}"}}).raise_for_status()
    for index, name in enumerate(probes):
        answer = admin.post(f"/v1/tenants/{tenant}/events", json={"name": f"P{index}"})
        assert answer.status_code == 200, (name, answer.text)
        [result] = answer.json()["results"]
        assert result.get("value") is not True, f"{name} escaped"
        assert "Traceback" not in answer.text, answer.text
        assert "<python>" not in answer.text, answer.text
    for owner in (tenant, bystander):
        pong = admin.post(f"/v1/tenants/{owner}/events", json={"name": "PING"}).json()
        assert pong["results"] == [{"template": pong["results"][0]["template"], "ok": True,
                                    "value": "pong"}]
