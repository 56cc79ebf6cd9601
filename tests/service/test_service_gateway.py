"""``POST /v1/gateway``: SERVICE.md's routing rules, drops with reasons, malformed payloads."""

from __future__ import annotations

import random
import time

import httpx
import pytest

RECORDER = """
return {
  INTERACTION_CREATE = function(ctx, event)
    ctx.kv.incr("seen:" .. event.id)
    ctx.kv.set("last", {tenant = ctx.tenant.kind .. ":" .. ctx.tenant.id, author = event.author})
  end,
  MESSAGE_CREATE = function(ctx, event)
    ctx.kv.set("last", {tenant = ctx.tenant.kind .. ":" .. ctx.tenant.id, author = event.author})
  end,
}
"""


def snowflake() -> str:
    return str(random.randrange(10**16, 10**18))


def install(admin: httpx.Client, tenant: str) -> None:
    response = admin.put(f"/v1/tenants/{tenant}/templates/recorder",
                         json={"files": {"init.lua": RECORDER}})
    assert response.status_code == 200, response.text


def last_seen(admin: httpx.Client, tenant: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        response = admin.get(f"/v1/tenants/{tenant}/kv/default/last")
        if response.status_code == 200:
            value: dict[str, object] = response.json()["value"]
            return value
        assert time.monotonic() < deadline, "the event never ran"
        time.sleep(0.05)


def interaction(owners: dict[str, str] | None, guild_id: str | None = None,
                user: str | None = None) -> dict[str, object]:
    data: dict[str, object] = {"id": snowflake(), "type": 2}
    if owners is not None:
        data["authorizing_integration_owners"] = owners
    if guild_id is not None:
        data["guild_id"] = guild_id
        data["member"] = {"user": {"id": user or snowflake()}}
    elif user is not None:
        data["user"] = {"id": user}
    return {"op": 0, "s": 7, "t": "INTERACTION_CREATE", "d": data}


def test_guild_install_wins(admin: httpx.Client) -> None:
    guild, user, other_guild = snowflake(), snowflake(), snowflake()
    install(admin, f"guild:{guild}")
    response = admin.post("/v1/gateway", json=interaction({"0": guild, "1": user}, other_guild))
    assert response.status_code == 202
    assert response.json()["tenant"] == f"guild:{guild}"
    assert isinstance(response.json()["event_id"], str)
    assert last_seen(admin, f"guild:{guild}")["tenant"] == f"guild:{guild}"


def test_guild_install_value_zero_does_not_count(admin: httpx.Client) -> None:
    user = snowflake()
    install(admin, f"user:{user}")
    response = admin.post("/v1/gateway", json=interaction({"0": "0", "1": user}, user=user))
    assert response.status_code == 202
    assert response.json()["tenant"] == f"user:{user}"
    seen = last_seen(admin, f"user:{user}")
    assert seen == {"tenant": f"user:{user}", "author": user}


def test_user_install_routes_to_the_user_even_inside_a_guild(admin: httpx.Client) -> None:
    user, guild = snowflake(), snowflake()
    install(admin, f"user:{user}")
    install(admin, f"guild:{guild}")
    response = admin.post("/v1/gateway", json=interaction({"1": user}, guild_id=guild))
    assert response.status_code == 202
    assert response.json()["tenant"] == f"user:{user}"
    assert last_seen(admin, f"user:{user}")["tenant"] == f"user:{user}"
    assert admin.get(f"/v1/tenants/guild:{guild}/kv/default/last").status_code == 404


def test_other_dispatches_route_by_guild_id(admin: httpx.Client) -> None:
    guild, author = snowflake(), snowflake()
    install(admin, f"guild:{guild}")
    payload = {"op": 0, "t": "MESSAGE_CREATE",
               "d": {"guild_id": guild, "author": {"id": author}, "content": "hi"}}
    response = admin.post("/v1/gateway", json=payload)
    assert response.status_code == 202
    assert response.json()["tenant"] == f"guild:{guild}"
    assert last_seen(admin, f"guild:{guild}") == {"tenant": f"guild:{guild}", "author": author}


@pytest.mark.parametrize("payload", [
    {"t": "MESSAGE_CREATE", "d": {"channel_id": "1", "content": "a DM"}},
    {"t": "READY", "d": {"v": 10}},
    {"t": "MESSAGE_CREATE", "d": {"guild_id": "abc"}},
    {"t": "MESSAGE_CREATE", "d": {"guild_id": "0"}},
    {"t": "INTERACTION_CREATE", "d": {"authorizing_integration_owners": {"0": "0"}}},
    {"t": "INTERACTION_CREATE", "d": {"authorizing_integration_owners": {}}},
])
def test_dispatches_without_a_tenant_are_dropped_with_a_reason(
    admin: httpx.Client, payload: dict[str, object],
) -> None:
    response = admin.post("/v1/gateway", json=payload)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["dropped"], str)
    assert response.json()["dropped"]


def test_dispatches_nobody_subscribes_to_are_dropped(admin: httpx.Client) -> None:
    guild = snowflake()
    install(admin, f"guild:{guild}")
    response = admin.post("/v1/gateway", json={"t": "TYPING_START", "d": {"guild_id": guild}})
    assert response.status_code == 200
    assert "TYPING_START" in response.json()["dropped"]
    assert response.json()["tenant"] == f"guild:{guild}"
    unknown = admin.post("/v1/gateway",
                         json={"t": "MESSAGE_CREATE", "d": {"guild_id": snowflake()}})
    assert unknown.status_code == 200
    assert "dropped" in unknown.json()


@pytest.mark.parametrize("payload", [
    [], "x", 5, None, {}, {"t": "X"}, {"d": {}}, {"t": 5, "d": {}}, {"t": "", "d": {}},
    {"t": "X", "d": []}, {"t": "X", "d": "guild"}, {"t": "X" * 101, "d": {"guild_id": "1"}},
])
def test_malformed_payloads_are_4xx(admin: httpx.Client, payload: object) -> None:
    response = admin.post("/v1/gateway", json=payload)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


@pytest.mark.parametrize("raw", [b'{"t": "X", "d": {"guild_id": "1", "bad": NaN}}', b"{",
                                 b'{"t": "X", "d": {"guild_id": "1", "n": 1e999}}'])
def test_malformed_json_payloads_are_4xx(admin: httpx.Client, raw: bytes) -> None:
    response = admin.post("/v1/gateway", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


def test_non_ascii_digits_in_a_guild_id_are_4xx_or_dropped(admin: httpx.Client) -> None:
    response = admin.post("/v1/gateway", json={"t": "MESSAGE_CREATE", "d": {"guild_id": "١٢٣"}})
    assert response.status_code in (200, 422), response.text
