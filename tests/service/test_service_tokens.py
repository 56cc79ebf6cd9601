"""Tokens an operator can see and end: ids, labels, last use; revoke; one admin token that
rotation replaces at once; a deleted admin token file never leaves the old token working."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
from service_support import MOONSHARD, Served, cli_env, new_guild, serving


def run(served: Served, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = cli_env(served)
    if token is not None:
        env["MOONSHARD_TOKEN"] = token
    return subprocess.run([*MOONSHARD, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def status_with(served: Served, token: str, tenant: str) -> int:
    with served.client(token) as client:
        return client.get(f"/v1/tenants/{tenant}/templates").status_code


def test_list_and_revoke_over_http_and_the_cli(served: Served, admin: httpx.Client) -> None:
    tenant = new_guild()
    created = admin.post("/v1/tokens", json={"tenant": tenant, "label": "deploy bot"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "token", "tenant", "label"}
    assert body["label"] == "deploy bot"
    assert status_with(served, body["token"], tenant) == 200
    listed = admin.get("/v1/tokens").json()
    mine = [item for item in listed if item["id"] == body["id"]]
    assert mine == [{"id": body["id"], "tenant": tenant, "label": "deploy bot",
                     "created_at": mine[0]["created_at"],
                     "last_used_at": mine[0]["last_used_at"]}]
    assert mine[0]["last_used_at"] is not None
    assert body["token"] not in json.dumps(listed)
    admins = [item for item in listed if item["tenant"] is None]
    assert len(admins) == 1
    assert admins[0]["label"] == "admin"
    # The CLI shows the same, piped as exact tab-separated lines.
    shown = run(served, "token", "ls")
    assert shown.returncode == 0, shown.stderr
    rows = [line.split("\t") for line in shown.stdout.splitlines()]
    assert rows[0] == ["id", "tenant", "label", "created", "last used"]
    assert [body["id"], tenant, "deploy bot"] in [row[:3] for row in rows]
    assert json.loads(run(served, "token", "ls", "--json").stdout) == admin.get(
        "/v1/tokens").json()
    revoked = run(served, "token", "revoke", body["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert status_with(served, body["token"], tenant) == 401
    again = admin.delete(f"/v1/tokens/{body['id']}")
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "not_found"
    refused = admin.delete(f"/v1/tokens/{admins[0]['id']}")
    assert refused.status_code == 409, refused.text
    assert "rotate-admin" in refused.json()["error"]["message"]
    tenant_token = admin.post("/v1/tokens", json={"tenant": tenant}).json()["token"]
    with served.client(tenant_token) as client:
        assert client.get("/v1/tokens").status_code == 403


def test_rotate_admin_ends_the_old_token_at_once(tmp_path: Path) -> None:
    with serving(tmp_path, workers=1) as served:
        old = served.admin_token
        tenant = new_guild()
        rotated = run(served, "token", "rotate-admin", "--json")
        assert rotated.returncode == 0, rotated.stderr
        new = json.loads(rotated.stdout)
        assert new["file"] == str(served.data_folder / "admin-token")
        assert (served.data_folder / "admin-token").read_text().strip() == new["token"]
        assert status_with(served, old, tenant) == 401
        assert status_with(served, new["token"], tenant) == 200
        plain = run(served, "token", "rotate-admin", token=new["token"])
        assert plain.returncode == 0, plain.stderr
        assert status_with(served, new["token"], tenant) == 401
        assert status_with(served, plain.stdout.strip(), tenant) == 200
        assert "no longer works" in plain.stderr
        assert served.stop() == 0


def test_a_deleted_token_file_never_leaves_the_old_admin_token_alive(tmp_path: Path) -> None:
    tenant = new_guild()
    with serving(tmp_path, workers=1) as first:
        old = first.admin_token
        assert first.stop() == 0
    (first.data_folder / "admin-token").unlink()
    with serving(tmp_path, workers=1) as second:
        assert second.admin_token != old
        assert status_with(second, old, tenant) == 401
        assert status_with(second, second.admin_token, tenant) == 200
        with second.client() as admin:
            assert len([item for item in admin.get("/v1/tokens").json()
                        if item["tenant"] is None]) == 1
        assert second.stop() == 0
    # A start with the file in place keeps that token.
    with serving(tmp_path, workers=1) as third:
        assert third.admin_token == second.admin_token
        assert status_with(third, third.admin_token, tenant) == 200
        assert third.stop() == 0


def test_rotation_is_refused_when_the_admin_token_is_a_setting(tmp_path: Path) -> None:
    chosen = "mst_" + "k" * 43
    with serving(tmp_path, workers=1, env={"MOONSHARD_ADMIN_TOKEN": chosen}) as served:
        # The helper reads the file; with ADMIN_TOKEN set there is none: use the setting.
        with httpx.Client(base_url=served.url,
                          headers={"Authorization": f"Bearer {chosen}"}) as client:
            refused = client.post("/v1/tokens/rotate-admin")
        assert refused.status_code == 409, refused.text
        assert "MOONSHARD_ADMIN_TOKEN" in refused.json()["error"]["message"]
        assert chosen not in refused.text
        assert served.stop() == 0
