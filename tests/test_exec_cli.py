"""``moonshard exec`` run as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "welcome"


def moonshard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonshard", *args], capture_output=True, text=True,
        timeout=120, cwd=cwd, check=False)


def template(tmp_path: Path, source: str, **files: str) -> Path:
    folder = tmp_path / "tpl"
    folder.mkdir(exist_ok=True)
    (folder / "init.lua").write_text(source)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_the_example_runs_and_prints_json_results() -> None:
    done = moonshard("exec", str(EXAMPLE), "--event", "GUILD_MEMBER_ADD",
                     "--data", f"@{EXAMPLE / 'member.json'}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["tenant"] == "guild:1"
    assert out["results"] == [{"template": "welcome", "ok": True, "value": {
        "greeting": "Welcome, nelly! You are member #1.", "member_number": 1}}]
    # The emitted event ran after, and saw the key the first handler committed.
    emitted = out["emitted"][0]
    assert emitted["event"]["name"] == "WelcomeSent"
    assert emitted["results"][0]["value"]["name"] == "nelly"
    assert "[info] welcome: Welcome, nelly! You are member #1." in done.stderr


def test_a_failing_handler_exits_1_with_file_and_line(tmp_path: Path) -> None:
    folder = template(tmp_path, "return {X = function(ctx, event)\n  error('boom')\nend}")
    done = moonshard("exec", str(folder), "--event", "X")
    assert done.returncode == 1
    result = json.loads(done.stdout)["results"][0]
    assert result == {"template": "tpl", "ok": False, "error": "init.lua:2: boom"}
    assert "Traceback" not in done.stderr  # the template's traceback, not Python's
    assert "init.lua:2: boom" in done.stderr


def test_a_template_that_does_not_compile_exits_1_with_a_clear_error(tmp_path: Path) -> None:
    folder = template(tmp_path, "return {\n  X = function( end\n}")
    done = moonshard("exec", str(folder), "--event", "X")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "compile_error"
    assert (error["file"], error["line"]) == ("init.lua", 2)
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [
    ["--event", "X", "--data", "{not json"],
    ["--event", "X", "--tenant", "planet:1"],
    ["--event", "X", "--memory", "lots"],
    ["--event", "X", "--cpu", "-1"],
    [],
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    folder = template(tmp_path, "return {X = function() end}")
    done = moonshard("exec", str(folder), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    done = moonshard("exec", str(tmp_path / "nope"), "--event", "X")
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_limits_are_reported_and_state_can_be_kept(tmp_path: Path) -> None:
    folder = template(tmp_path, """
        return {
          LOOP = function() while true do end end,
          HOG = function() local t = {} for i = 1, 1e9 do t[i] = i end end,
          COUNT = function(ctx) return ctx.kv.incr("n") end,
        }""")
    loop = moonshard("exec", str(folder), "--event", "LOOP", "--cpu", "0.3")
    assert loop.returncode == 1
    assert json.loads(loop.stdout)["results"][0]["error"].endswith(": cpu time limit exceeded")
    hog = moonshard("exec", str(folder), "--event", "HOG", "--memory", "4MiB")
    assert json.loads(hog.stdout)["results"][0]["error"].endswith("memory limit exceeded")
    state = tmp_path / "state.db"
    counts = [json.loads(moonshard("exec", str(folder), "--event", "COUNT", "--state",
                                   str(state)).stdout)["results"][0]["value"]
              for _ in range(2)]
    assert counts == [1, 2]


def test_a_quadratic_pattern_on_a_long_subject_is_refused_before_it_runs(
    tmp_path: Path,
) -> None:
    # One repetition that must back off, on a long subject, is quadratic: refused at once,
    # not left to the hard wall-clock limit that would end the whole process.
    folder = template(tmp_path, """
        return {STUCK = function() return string.rep("a", 400000):find("a-b") end}""")
    done = moonshard("exec", str(folder), "--event", "STUCK", "--cpu", "1")
    assert done.returncode == 1
    result = json.loads(done.stdout)["results"][0]
    assert result["ok"] is False
    assert "string.find: pattern \"a-b\"" in result["error"]
    assert "too costly for a subject of 400000 bytes" in result["error"]


def test_a_refused_pattern_bomb_is_an_ordinary_failure(tmp_path: Path) -> None:
    folder = template(tmp_path, """
        return {BOMB = function() return string.rep("a", 400):find(".-.-.-.-b$") end}""")
    done = moonshard("exec", str(folder), "--event", "BOMB", "--cpu", "1")
    assert done.returncode == 1
    assert "too costly" in json.loads(done.stdout)["results"][0]["error"]


def test_an_event_with_no_handler_warns(tmp_path: Path) -> None:
    folder = template(tmp_path, "return {X = function() end}")
    done = moonshard("exec", str(folder), "--event", "Y")
    assert done.returncode == 0
    assert json.loads(done.stdout)["results"] == []
    assert "no handler for Y" in done.stderr
