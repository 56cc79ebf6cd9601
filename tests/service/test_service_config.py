"""Settings: flags, then MOONSHARD_<NAME>, then moonshard.toml, then defaults; serve's refusals."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from service_support import MOONSHARD, free_port, start_server

from moonshard.config import ClientSettings, ConfigError, Settings


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.resolve({}, {})
    assert settings.database_url == "sqlite:///./moonshard-data/moonshard.db"
    assert settings.topology == "process"
    assert settings.workers == (os.cpu_count() or 1)
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.admin_token is None
    assert settings.discord_api_url == "https://discord.com/api/v10"
    assert settings.limits.memory_bytes == 25 * 1024 * 1024
    assert settings.limits.cpu_seconds == 10.0
    assert settings.admin_token_path == Path("moonshard-data/admin-token")
    assert Settings.resolve({}, {}, default_topology="thread").topology == "thread"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "moonshard.toml").write_text(
        'port = 7000\nworkers = 3\nhost = "0.0.0.0"\nMEMORY_LIMIT = "64MiB"\n')
    env = {"MOONSHARD_PORT": "7001", "MOONSHARD_WORKERS": "5"}
    settings = Settings.resolve({"PORT": "7002"}, env)
    assert settings.port == 7002
    assert settings.workers == 5
    assert settings.host == "0.0.0.0"
    assert settings.memory_limit == 64 * 1024 * 1024
    assert settings.source_of("PORT") == "--port"
    assert settings.source_of("WORKERS") == "MOONSHARD_WORKERS"
    assert settings.source_of("HOST").endswith("moonshard.toml: host")
    assert settings.source_of("TOPOLOGY") == "default"


def test_postgres_data_folder(tmp_path: Path) -> None:
    settings = Settings.resolve({"DATABASE_URL": "postgresql://u@localhost/db"}, {})
    assert settings.data_folder == Path("moonshard-data")
    sqlite = Settings.resolve({"DATABASE_URL": f"sqlite:///{tmp_path}/x/y.db"}, {})
    assert sqlite.admin_token_path == tmp_path / "x" / "admin-token"


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({"PORT": "abc"}, {}, "--port='abc'"),
    ({}, {"MOONSHARD_PORT": "70000"}, "MOONSHARD_PORT"),
    ({}, {"MOONSHARD_WORKERS": "0"}, "MOONSHARD_WORKERS"),
    ({"TOPOLOGY": "fork"}, {}, "thread, process or ray"),
    ({"MEMORY_LIMIT": "lots"}, {}, "--memory-limit"),
    ({"CPU_LIMIT": "-1"}, {}, "--cpu-limit"),
    ({"DATABASE_URL": "mysql://root:secret@x/db"}, {}, "unsupported scheme"),
    ({"DATABASE_URL": "sqlite:///:memory:"}, {}, "in-memory"),
    ({"DISCORD_API_URL": "ftp://x"}, {}, "http"),
])
def test_bad_values_name_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      flags: dict[str, str], env: dict[str, str],
                                      message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        Settings.resolve(flags, env)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)


def test_bad_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "moonshard.toml").write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        Settings.resolve({}, {})
    (tmp_path / "moonshard.toml").write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.resolve({}, {})
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.resolve({}, {"MOONSHARD_CONFIG": str(tmp_path / "missing.toml")})


def test_client_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ClientSettings.resolve(None, None, {}).url == "http://127.0.0.1:8080"
    assert ClientSettings.resolve(None, None, {}).token is None
    (tmp_path / "moonshard-data").mkdir()
    (tmp_path / "moonshard-data" / "admin-token").write_text("mst_abc\n")
    local = ClientSettings.resolve(None, None, {"MOONSHARD_URL": "http://h:1/"})
    assert (local.url, local.token) == ("http://h:1", "mst_abc")
    assert ClientSettings.resolve(None, "flag", {"MOONSHARD_TOKEN": "env"}).token == "flag"
    assert ClientSettings.resolve(None, None, {"MOONSHARD_TOKEN": "env"}).token == "env"
    with pytest.raises(ConfigError):
        ClientSettings.resolve("localhost:8080", None, {})


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MOONSHARD_DATABASE_URL": f"sqlite:///{tmp_path}/db/m.db",
                "MOONSHARD_TOPOLOGY": "thread", "MOONSHARD_WORKERS": "1", **(env or {})}
    return subprocess.run([*MOONSHARD, "serve", *args], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_ray_topology_with_sqlite_is_one_line_error(tmp_path: Path) -> None:
    result = serve(tmp_path, "--topology", "ray")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --topology: the ray topology needs PostgreSQL (set DATABASE_URL to a "
        "postgresql:// URL every node reaches)")


def test_bad_settings_and_a_taken_port_are_one_line_errors(tmp_path: Path) -> None:
    bad = serve(tmp_path, "--port", "abc")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: --port='abc': expected a whole number, got 'abc'"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = serve(tmp_path, "--port", str(port))
    assert busy.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr


def test_toml_settings_admin_token_file_and_an_unreachable_discord(tmp_path: Path) -> None:
    (tmp_path / "moonshard.toml").write_text("workers = 1\n")
    # A well-formed token, and a Discord nobody answers at: the API serves all the same.
    served = start_server(tmp_path, workers=None, env={
        "MOONSHARD_DISCORD_TOKEN": "NDI0Mg.GfAkE.xxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "MOONSHARD_DISCORD_API_URL": f"http://127.0.0.1:{free_port()}/api/v10"})
    try:
        health = httpx.get(f"{served.url}/healthz").json()
        assert len(health["workers"]) == 1
        assert health["gateway"]["state"] in ("starting", "reconnecting")
        token_file = served.data_folder / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert str(token_file) in served.output()
    finally:
        assert served.stop() == 0
    assert "discord: gateway via http://127.0.0.1:" in served.output()
    # A restart keeps the same admin token.
    again = start_server(tmp_path, workers=None)
    try:
        assert again.admin_token == served.admin_token
        with again.client() as admin:
            assert admin.get("/v1/tenants/guild:1").status_code == 200
            tenant_token = admin.post("/v1/tokens", json={"tenant": "guild:1"}).json()["token"]
    finally:
        assert again.stop() == 0
    # An ADMIN_TOKEN that is some tenant's token is refused, in one line.
    refused = serve(tmp_path, env={"MOONSHARD_DATABASE_URL": served.database_url,
                                   "MOONSHARD_ADMIN_TOKEN": tenant_token, "MOONSHARD_PORT": "0"})
    assert refused.returncode == 1
    assert "MOONSHARD_ADMIN_TOKEN: that token already exists for a single tenant" in \
        refused.stderr
    assert "Traceback" not in refused.stderr
