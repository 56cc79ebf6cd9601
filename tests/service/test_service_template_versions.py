"""Template versions and leaderboards through a real ``moonshard serve``, on SQLite and on
PostgreSQL: history, rollback (previous, a given version, a pruned one), its errors, the CLI,
and ``ctx.kv.top`` / ``ctx.kv.rank`` run by a template."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from service_support import MOONSHARD, SUITE, Served, cli_env, new_guild, serving

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def source(word: str) -> str:
    return (f'return {{ WHICH = function(ctx, event) return "{word}" end,\n'
            f'  {word.upper()} = function() end }}')


@pytest.fixture(scope="module", params=[SUITE.database] + (
    ["postgres"] if SUITE.database == "sqlite" else []))
def server(request: pytest.FixtureRequest, served: Served,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The shared server, and on a suite run on SQLite one on a fresh PostgreSQL schema."""
    if request.param == SUITE.database:
        yield served
        return
    schema = "t_" + uuid.uuid4().hex[:16]
    env = {"MOONSHARD_DATABASE_URL": f"{POSTGRES_URL}?schema={schema}",
           "MOONSHARD_ADMIN_TOKEN": "mst_" + secrets.token_urlsafe(32)}
    try:
        with serving(tmp_path_factory.mktemp("pg-served"), env=env) as pg_served:
            yield pg_served
            assert pg_served.stop() == 0, pg_served.output()
            assert "Traceback" not in pg_served.output()
    finally:
        asyncio.run(_drop(schema))


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def push(admin: httpx.Client, tenant: str, word: str, name: str = "which") -> int:
    saved = admin.put(f"/v1/tenants/{tenant}/templates/{name}",
                      json={"files": {"init.lua": source(word)}})
    assert saved.status_code == 200, saved.text
    version: int = saved.json()["version"]
    return version


def which(admin: httpx.Client, tenant: str) -> object:
    ran = admin.post(f"/v1/tenants/{tenant}/events", json={"name": "WHICH"})
    assert ran.status_code == 200, ran.text
    return ran.json()["results"][0]["value"]


def test_history_and_rollback(server: Served) -> None:
    tenant = new_guild()
    base = f"/v1/tenants/{tenant}/templates/which"
    with server.client() as admin:
        v1, v2, v3 = (push(admin, tenant, word) for word in ("one", "two", "three"))
        history = admin.get(f"{base}/versions")
        assert history.status_code == 200
        assert [(item["version"], item["events"]) for item in history.json()] == [
            (v3, ["THREE", "WHICH"]), (v2, ["TWO", "WHICH"]), (v1, ["ONE", "WHICH"])]
        assert all(isinstance(item["updated_at"], float) for item in history.json())
        assert which(admin, tenant) == "three"

        # Default: the previous version, saved as a new one; the next event sees it.
        back = admin.post(f"{base}/rollback")
        assert back.status_code == 200, back.text
        v4 = back.json()["version"]
        assert back.json() == {"name": "which", "version": v4, "events": ["TWO", "WHICH"]}
        assert v4 > v3
        assert which(admin, tenant) == "two"
        shown = admin.get(base).json()
        assert shown["files"] == {"init.lua": source("two")}
        assert shown["version"] == v4

        # A given version (an empty body and {} are the same as no version).
        to_one = admin.post(f"{base}/rollback", json={"version": v1})
        assert to_one.status_code == 200, to_one.text
        assert to_one.json()["events"] == ["ONE", "WHICH"]
        assert which(admin, tenant) == "one"
        v5 = to_one.json()["version"]
        assert admin.post(f"{base}/rollback", json={}).json()["events"] == ["TWO", "WHICH"]
        assert which(admin, tenant) == "two"
        assert [item["version"] for item in admin.get(f"{base}/versions").json()] == [
            v5 + 1, v5, v4, v3, v2, v1]

        # Errors: the current version, unknown versions and templates, bad bodies.
        current = admin.post(f"{base}/rollback", json={"version": v5 + 1})
        assert current.status_code == 409
        assert current.json()["error"]["code"] == "conflict"
        assert "already the current version" in current.json()["error"]["message"]
        missing = admin.post(f"{base}/rollback", json={"version": 10**9})
        assert missing.status_code == 404
        assert f"no version {10**9} kept" in missing.json()["error"]["message"]
        for unknown in (admin.post(f"/v1/tenants/{tenant}/templates/nope/rollback"),
                        admin.get(f"/v1/tenants/{tenant}/templates/nope/versions")):
            assert unknown.status_code == 404
            assert unknown.json()["error"]["message"] == f"{tenant} has no template 'nope'"
        for bad in ({"version": 0}, {"version": "3"}, {"version": 1.5}, {"other": 1}):
            refused = admin.post(f"{base}/rollback", json=bad)
            assert refused.status_code == 422, (bad, refused.text)
        assert which(admin, tenant) == "two"  # nothing of it changed the template


def test_ten_versions_are_kept_and_a_pruned_one_is_404(server: Served) -> None:
    tenant = new_guild()
    base = f"/v1/tenants/{tenant}/templates/which"
    with server.client() as admin:
        versions = [push(admin, tenant, f"w{number}") for number in range(12)]
        kept = [item["version"] for item in admin.get(f"{base}/versions").json()]
        assert kept == versions[::-1][:10]
        pruned = admin.post(f"{base}/rollback", json={"version": versions[1]})
        assert pruned.status_code == 404
        assert "kept: " in pruned.json()["error"]["message"]
        oldest = admin.post(f"{base}/rollback", json={"version": versions[2]})
        assert oldest.status_code == 200
        assert which(admin, tenant) == "w2"
        # The rollback is a save too: still 10 kept, the oldest now pruned.
        kept = [item["version"] for item in admin.get(f"{base}/versions").json()]
        assert kept == [oldest.json()["version"], *versions[::-1][:9]]


def test_nothing_to_roll_back_to_is_409(server: Served) -> None:
    tenant = new_guild()
    with server.client() as admin:
        push(admin, tenant, "only")
        refused = admin.post(f"/v1/tenants/{tenant}/templates/which/rollback")
        assert refused.status_code == 409
        assert refused.json()["error"]["message"] == (
            f"template 'which' of {tenant} has no earlier version to roll back to")
        # A delete forgets the history.
        assert admin.delete(f"/v1/tenants/{tenant}/templates/which").status_code == 204
        assert admin.get(
            f"/v1/tenants/{tenant}/templates/which/versions").status_code == 404


def test_a_tenant_token_reaches_its_own_history_only(server: Served) -> None:
    tenant, other = new_guild(), new_guild()
    with server.client() as admin:
        push(admin, tenant, "one")
        push(admin, other, "one")
        token = admin.post("/v1/tokens", json={"tenant": tenant}).json()["token"]
    with server.client(token) as client:
        assert client.get(f"/v1/tenants/{tenant}/templates/which/versions").status_code == 200
        assert client.get(f"/v1/tenants/{other}/templates/which/versions").status_code == 403
        assert client.post(f"/v1/tenants/{other}/templates/which/rollback").status_code == 403


def cli(server: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOONSHARD, *args], env=cli_env(server, COLUMNS="40"),
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_cli_lists_and_rolls_back(server: Served) -> None:
    tenant = new_guild()
    with server.client() as admin:
        versions = [push(admin, tenant, word) for word in ("one", "two")]
        history = admin.get(f"/v1/tenants/{tenant}/templates/which/versions").json()
    listed = cli(server, "template", "history", "which", "--tenant", tenant)
    assert listed.returncode == 0, listed.stderr
    # Piped: a header and one tab-separated line per version, whole, newest first.
    import datetime

    def when(seconds: float) -> str:
        return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")

    assert listed.stdout == (
        "version\tsaved\tevents\tcurrent\n"
        f"{versions[1]}\t{when(history[0]['updated_at'])}\tTWO, WHICH\tyes\n"
        f"{versions[0]}\t{when(history[1]['updated_at'])}\tONE, WHICH\t\n")
    as_json = cli(server, "template", "history", "which", "--tenant", tenant, "--json")
    assert json.loads(as_json.stdout) == history

    back = cli(server, "template", "rollback", "which", "--tenant", tenant)
    assert back.returncode == 0, back.stderr
    assert back.stdout == (f"rolled which back to the previous version on {tenant}: now "
                           f"version {versions[1] + 1}, handles ONE, WHICH\n")
    given = cli(server, "template", "rollback", "which", str(versions[1]), "--tenant", tenant,
                "--json")
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout) == {"name": "which", "version": versions[1] + 2,
                                        "events": ["TWO", "WHICH"]}
    pruned = cli(server, "template", "rollback", "which", "999999", "--tenant", tenant)
    assert pruned.returncode == 1
    assert pruned.stderr.count("\n") == 1
    assert "no version 999999 kept" in pruned.stderr
    unknown = cli(server, "template", "history", "nope", "--tenant", tenant)
    assert unknown.returncode == 1
    assert f"{tenant} has no template 'nope'" in unknown.stderr
    usage = cli(server, "template", "rollback", "which", "0", "--tenant", tenant)
    assert usage.returncode == 2


LEVELS = """
return {
  XP = function(ctx, event)
    return ctx.kv.incr(event.data.user, event.data.xp, {scope = "xp"})
  end,
  BOARD = function(ctx, event)
    -- a write of this run is on its own board already
    if event.data.bump then ctx.kv.incr(event.data.bump, 1000, {scope = "xp"}) end
    local names = {}
    for _, record in ipairs(ctx.kv.top({scope = "xp", limit = event.data.limit,
                                        after = event.data.after})) do
      names[#names + 1] = record.key .. "=" .. record.value
    end
    return {top = names, rank = ctx.kv.rank(event.data.who, {scope = "xp"}) or json.null}
  end,
}
"""


def test_a_template_reads_its_leaderboard(server: Served) -> None:
    tenant = new_guild()
    with server.client() as admin:
        saved = admin.put(f"/v1/tenants/{tenant}/templates/levels",
                          json={"files": {"init.lua": LEVELS}})
        assert saved.status_code == 200, saved.text
        for user, xp in (("ann", 5), ("bob", 9), ("cat", 5), ("ann", 2), ("dan", 1)):
            admin.post(f"/v1/tenants/{tenant}/events", json={"name": "XP",
                                                            "data": {"user": user, "xp": xp}})
        admin.put(f"/v1/tenants/{tenant}/kv/xp/note", json={"value": "text never ranks"})

        def board(**data: object) -> object:
            ran = admin.post(f"/v1/tenants/{tenant}/events", json={"name": "BOARD",
                                                                   "data": data})
            result = ran.json()["results"][0]
            assert result["ok"], result
            return result["value"]

        assert board(who="cat") == {"top": ["bob=9", "ann=7", "cat=5", "dan=1"], "rank": 3}
        assert board(who="note", limit=2) == {"top": ["bob=9", "ann=7"], "rank": None}
        assert board(who="dan", after="ann") == {"top": ["cat=5", "dan=1"], "rank": 4}
        assert board(who="dan", bump="dan", limit=2) == {"top": ["dan=1001", "bob=9"],
                                                          "rank": 1}
        assert board(who="nobody") == {"top": ["dan=1001", "bob=9", "ann=7", "cat=5"],
                                       "rank": None}
        failed = admin.post(f"/v1/tenants/{tenant}/events", json={
            "name": "BOARD", "data": {"who": "x", "after": "note"}}).json()["results"][0]
        assert failed["ok"] is False
        assert "opts.after: key 'note' is not on the leaderboard of scope 'xp'" in \
            failed["error"]


def test_a_rollback_keeps_the_paused_state(server: Served) -> None:
    tenant = new_guild()
    base = f"/v1/tenants/{tenant}/templates/which"
    with server.client() as admin:
        push(admin, tenant, "one")
        paused = admin.put(base, json={"files": {"init.lua": source("two")}, "paused": True})
        assert paused.status_code == 200
        assert admin.post(f"{base}/rollback").status_code == 200
        shown = admin.get(base).json()
        assert shown["paused"] is True
        assert shown["files"] == {"init.lua": source("one")}
        ran = admin.post(f"/v1/tenants/{tenant}/events", json={"name": "WHICH"})
        assert ran.json()["results"] == []
