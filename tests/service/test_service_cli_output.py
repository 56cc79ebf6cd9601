"""Piped CLI output is exact: no re-wrapping at 80 columns, nothing cut short."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from service_support import MOONSHARD, Served, cli_env, new_guild

LONG = "x" * 150 + " words " * 30
SOURCE = f"""-- a comment longer than any terminal: {"y" * 200}
return {{
  ECHO = function(ctx, event)
    local text = "{LONG}"
    print(text)
    return {{text = text, data = event.data}}
  end,
}}
"""


def run(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    # COLUMNS is small on purpose: piped output must not care.
    return subprocess.run([*MOONSHARD, *args], env=cli_env(served, COLUMNS="40"),
                          capture_output=True, text=True, timeout=60, check=False)


def test_piped_output_is_whole(served: Served, tmp_path: Path) -> None:
    tenant = new_guild()
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "init.lua").write_text(SOURCE)
    assert run(served, "template", "push", str(folder), "--tenant", tenant).returncode == 0
    shown = run(served, "template", "show", "echo", "--tenant", tenant)
    assert shown.returncode == 0, shown.stderr
    assert SOURCE.rstrip("\n") in shown.stdout
    dispatched = run(served, "dispatch", "ECHO", "--tenant", tenant, "--data", '{"n": 1}')
    assert dispatched.returncode == 0, dispatched.stderr
    # One line, the value whole (a Lua table's key order is its own).
    assert dispatched.stdout.startswith("echo: ok ")
    assert dispatched.stdout.count("\n") == 1
    assert json.loads(dispatched.stdout.removeprefix("echo: ok ")) == {
        "data": {"n": 1}, "text": LONG}
    as_json = run(served, "dispatch", "ECHO", "--tenant", tenant, "--json")
    assert json.loads(as_json.stdout)["results"][0]["value"]["text"] == LONG
    key = "k/" + "z" * 120
    value = {"long": LONG}
    set_key = run(served, "kv", "set", key, json.dumps(value), "--tenant", tenant)
    assert set_key.returncode == 0, set_key.stderr
    listed = run(served, "kv", "ls", "--tenant", tenant)
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert rows[0] == ["key", "value", "version", "updated", "expires"]
    assert rows[1][:3] == [key, json.dumps(value, ensure_ascii=False), "1"]
    logged = run(served, "logs", "--tenant", tenant)
    assert logged.stdout.splitlines()[-1].endswith(f"[info] echo: {LONG}")
