"""The ``moonshard`` client commands, run as subprocesses against the served instance."""

from __future__ import annotations

import json
import select
import subprocess
import time
from pathlib import Path

import httpx
from service_support import COUNTER, MOONSHARD, Served, cli_env, free_port, new_guild

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "welcome"


def run(served: Served, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOONSHARD, *args], env=env or cli_env(served), cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_walk_through(served: Served, tmp_path: Path) -> None:
    tenant = "guild:81384788765712384"
    pushed = run(served, "template", "push", str(EXAMPLE), "--tenant", tenant)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed welcome" in pushed.stdout
    assert "GUILD_MEMBER_ADD" in pushed.stdout
    listed = run(served, "template", "ls", "--tenant", tenant)
    assert "welcome" in listed.stdout
    as_json = json.loads(run(served, "template", "ls", "--tenant", tenant, "--json").stdout)
    assert [item["name"] for item in as_json] == ["welcome"]
    shown = run(served, "template", "show", "welcome", "--tenant", tenant)
    assert "-- greet.lua" in shown.stdout
    assert "-- init.lua" in shown.stdout
    sent = run(served, "dispatch", "GUILD_MEMBER_ADD", "--tenant", tenant,
               "--data", f"@{EXAMPLE / 'member.json'}", "--json")
    assert sent.returncode == 0, sent.stderr
    results = json.loads(sent.stdout)["results"]
    assert results[0]["ok"] is True
    assert "Welcome, nelly!" in results[0]["value"]["greeting"]
    logs = run(served, "logs", "--tenant", tenant)
    assert "Welcome, nelly!" in logs.stdout
    keys = run(served, "kv", "ls", "--tenant", tenant)
    assert "members:joined" in keys.stdout


def test_dispatch_exit_status_and_no_wait(served: Served) -> None:
    tenant = new_guild()
    with served.client() as admin:
        admin.put(f"/v1/tenants/{tenant}/templates/counter", json={"files": {"init.lua": COUNTER}})
    ok = run(served, "dispatch", "COUNT", "--tenant", tenant)
    assert ok.returncode == 0
    assert "counter: ok" in ok.stdout
    failed = run(served, "dispatch", "FAIL", "--tenant", tenant)
    assert failed.returncode == 1
    assert "boom" in failed.stdout
    queued = run(served, "dispatch", "COUNT", "--tenant", tenant, "--no-wait")
    assert queued.returncode == 0
    assert "queued COUNT" in queued.stdout
    nobody = run(served, "dispatch", "NOPE", "--tenant", tenant)
    assert nobody.returncode == 0
    assert "no template" in nobody.stdout


def test_kv_commands(served: Served) -> None:
    tenant = new_guild()
    assert run(served, "kv", "set", "greeting", '{"hello": "world"}', "--tenant", tenant,
               "--scope", "s", "--ttl", "3600").returncode == 0
    assert run(served, "kv", "set", "plain", "just text", "--tenant", tenant).returncode == 0
    got = run(served, "kv", "get", "greeting", "--tenant", tenant, "--scope", "s")
    assert json.loads(got.stdout) == {"hello": "world"}
    assert json.loads(run(served, "kv", "get", "plain", "--tenant", tenant).stdout) == \
        "just text"
    record = json.loads(run(served, "kv", "get", "greeting", "--tenant", tenant, "--scope", "s",
                            "--json").stdout)
    assert record["expires_at"] is not None
    listing = json.loads(run(served, "kv", "ls", "--tenant", tenant, "--scope", "s",
                             "--json").stdout)
    assert [item["key"] for item in listing["items"]] == ["greeting"]
    assert run(served, "kv", "rm", "greeting", "--tenant", tenant, "--scope", "s").returncode == 0
    missing = run(served, "kv", "get", "greeting", "--tenant", tenant, "--scope", "s")
    assert missing.returncode == 1
    assert "no key" in one_error_line(missing)


def test_token_create_gives_a_token_for_that_tenant_only(served: Served) -> None:
    tenant = new_guild()
    created = run(served, "token", "create", "--tenant", tenant)
    assert created.returncode == 0
    token = created.stdout.strip()
    env = cli_env(served, MOONSHARD_TOKEN=token)
    assert run(served, "template", "ls", "--tenant", tenant, env=env).returncode == 0
    other = run(served, "template", "ls", "--tenant", new_guild(), env=env)
    assert other.returncode == 1
    assert "403" in one_error_line(other)


def test_logs_follow(served: Served) -> None:
    tenant = new_guild()
    with served.client() as admin:
        admin.put(f"/v1/tenants/{tenant}/templates/counter", json={"files": {"init.lua": COUNTER}})
        follower = subprocess.Popen([*MOONSHARD, "logs", "--tenant", tenant, "--follow"],
                                    env=cli_env(served), stdout=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        try:
            line = ""
            deadline = time.monotonic() + 20
            while not line and time.monotonic() < deadline:
                admin.post(f"/v1/tenants/{tenant}/events", json={"name": "COUNT"})
                ready, _, _ = select.select([follower.stdout], [], [], 0.5)
                if ready:
                    line = follower.stdout.readline()
            assert "counted" in line
            assert follower.poll() is None, "the follower ended early"
        finally:
            follower.terminate()
            follower.wait(10)


def test_errors_are_one_line_with_non_zero_exit(served: Served, tmp_path: Path) -> None:
    down = cli_env(served, MOONSHARD_URL=f"http://127.0.0.1:{free_port()}")
    unreachable = run(served, "template", "ls", "--tenant", "guild:1", env=down)
    assert unreachable.returncode == 1
    assert "cannot reach" in one_error_line(unreachable)
    bad_tenant = run(served, "template", "ls", "--tenant", "guild:abc")
    assert bad_tenant.returncode == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "init.lua").write_text("return {\n X = function( end }")
    refused = run(served, "template", "push", str(broken), "--tenant", new_guild())
    assert refused.returncode == 1
    assert "init.lua:2" in one_error_line(refused)
    wrong = run(served, "template", "ls", "--tenant", "guild:1",
                env=cli_env(served, MOONSHARD_TOKEN="nope"))
    assert wrong.returncode == 1
    assert "401" in one_error_line(wrong)
    bad_data = run(served, "dispatch", "X", "--tenant", "guild:1", "--data", "{nope")
    assert bad_data.returncode == 2


def test_the_default_token_is_the_local_admin_token_file(served: Served, tmp_path: Path) -> None:
    # Run where the server runs: a PostgreSQL server's files are in its ./moonshard-data.
    env = cli_env(served, MOONSHARD_DATABASE_URL=served.database_url)
    del env["MOONSHARD_TOKEN"]
    assert run(served, "template", "ls", "--tenant", "guild:1", env=env, cwd=served.folder
               ).returncode == 0
    # No token file where the client looks: a clear error, not a 401.
    env["MOONSHARD_DATABASE_URL"] = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    missing = run(served, "template", "ls", "--tenant", "guild:1", env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert "MOONSHARD_TOKEN" in one_error_line(missing)
    assert httpx.get(f"{served.url}/healthz").status_code == 200
