"""``moonshard dev`` and ``moonshard exec --until-idle/--json``, run as an author runs them:
real subprocesses, real files, the prompt on stdin."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIMERS = """\
return {
  GO = function(ctx, event)
    ctx.kv.set("mute:" .. event.data.user, true, {ttl = 3600})
    ctx.events.schedule("REMIND", {text = event.data.text}, {delay = 86400})
    return "armed"
  end,
  REMIND = function(ctx, event)
    print("reminder: " .. event.data.text)
    return event.data.text
  end,
  KeyExpiry = function(ctx, event)
    return "expired " .. event.data.key
  end,
}
"""

VERSION = """\
return {
  PING = function(ctx, event)
    print("pinged by " .. tostring(event.author))
    return "v%d"
  end,
}
"""


def moonshard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moonshard", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def folder(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "tpl"
    path.mkdir(exist_ok=True)
    (path / "init.lua").write_text(source)
    return path


def test_exec_until_idle_fires_the_scheduled_event_and_the_key_expiry(tmp_path: Path) -> None:
    done = moonshard("exec", str(folder(tmp_path, TIMERS)), "--event", "GO", "--data",
                     '{"user": "42", "text": "stretch"}', "--until-idle")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["results"][0]["value"] == "armed"
    ran = [(report["event"]["name"], report["cause"], report["results"][0]["value"])
           for report in out["emitted"]]
    # The expiry is due in an hour, the reminder in a day: the fast clock runs them in order.
    assert ran == [("KeyExpiry", "expiry", "expired mute:42"),
                   ("REMIND", "scheduled", "stretch")]
    assert out["emitted"][1]["at"] - out["emitted"][0]["at"] >= 86400 - 3600 - 60
    assert "pending_timers" not in out
    assert "reminder: stretch" in done.stderr


def test_exec_without_until_idle_leaves_the_timers_pending(tmp_path: Path) -> None:
    done = moonshard("exec", str(folder(tmp_path, TIMERS)), "--event", "GO", "--data",
                     '{"user": "42", "text": "x"}')
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["emitted"] == []
    assert out["pending_timers"] == 2
    assert "--until-idle" in done.stderr


def test_exec_until_idle_stops_at_its_bound(tmp_path: Path) -> None:
    loop = folder(tmp_path, """\
return {
  TICK = function(ctx, event)
    ctx.events.schedule("TICK", {n = event.data.n + 1}, {delay = 60})
    return event.data.n
  end,
}
""")
    done = moonshard("exec", str(loop), "--event", "TICK", "--data", '{"n": 0}',
                     "--until-idle", "--max-events", "5")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [report["results"][0]["value"] for report in out["emitted"]] == [1, 2, 3, 4]
    assert out["pending_timers"] == 1


def test_exec_json_is_one_document_with_the_log_in_it(tmp_path: Path) -> None:
    done = moonshard("exec", str(folder(tmp_path, TIMERS)), "--event", "REMIND", "--data",
                     '{"text": "tea"}', "--json")
    assert done.returncode == 0
    assert done.stderr == ""
    out = json.loads(done.stdout)
    assert out["logs"] == [{"level": "info", "template": "tpl", "message": "reminder: tea"}]
    assert out["handled"] is True
    assert out["subscriptions"] == ["GO", "KeyExpiry", "REMIND"]
    broken = moonshard("exec", str(folder(tmp_path, "return {")), "--event", "X", "--json")
    assert broken.returncode == 1
    assert broken.stderr == ""
    error = json.loads(broken.stdout)["error"]
    assert (error["code"], error["template"], error["file"]) == ("compile_error", "tpl",
                                                                "init.lua")


class Dev:
    """A ``moonshard dev`` subprocess: lines in on stdin, lines out read on a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moonshard", "dev", *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, text: str) -> list[str]:
        """The lines up to and including the first that holds ``text``."""
        got: list[str] = []
        while True:
            line = self.lines.get(timeout=60)  # a bound on a hang, not a timing
            assert line is not None, f"dev ended before {text!r}: {self.seen}"
            self.seen.append(line)
            got.append(line)
            if text in line:
                return got

    def close(self) -> int:
        if self.process.stdin is not None:
            self.process.stdin.close()
        return self.process.wait(timeout=60)


def save(path: Path, text: str, step: int) -> None:
    path.write_text(text)
    stat = path.stat()
    # A later mtime for sure, even on a file system with coarse timestamps.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + step * 2_000_000_000))


def test_dev_reloads_on_save_and_keeps_the_old_version_on_a_broken_save(
        tmp_path: Path) -> None:
    template = folder(tmp_path, VERSION % 1)
    (template / "events").mkdir()
    (template / "events" / "PING.json").write_text('{"author": {"id": "80351110224678912"}}')
    dev = Dev(str(template))
    try:
        dev.expect("loaded tpl (v1); handles: PING")
        dev.send("PING")
        ran = dev.expect('ok tpl: "v1"')
        assert "[info] tpl: pinged by 80351110224678912" in ran
        save(template / "init.lua", VERSION % 2, 1)
        dev.expect("reloaded tpl (v2)")
        dev.send("PING {}")
        assert 'ok tpl: "v2"' in dev.expect('ok tpl:')[-1]
        save(template / "init.lua", "return {\n  PING = function(ctx, event)\n    if x = 1 "
             "then end\n  end,\n}\n", 2)
        refused = dev.expect("reload refused")
        assert refused[-1] == ("reload refused: tpl: init.lua:3: 'then' expected near '=' "
                               "(hint: `=` stores a value; to compare, write `==`, as in "
                               "`if x == 1 then`)")
        dev.expect("the previous version keeps running")
        dev.send("PING")
        assert dev.expect("ok tpl:")[-1].endswith('ok tpl: "v2"')
        dev.send("PING {not json")
        assert "not valid JSON" in dev.expect("error:")[-1]
        dev.send(":quit")
        assert dev.close() == 0
    finally:
        dev.process.kill()


def test_dev_on_a_fast_clock_runs_what_an_event_armed(tmp_path: Path) -> None:
    dev = Dev(str(folder(tmp_path, TIMERS)), "--clock", "fast")
    try:
        dev.expect("loaded tpl (v1)")
        dev.send('GO {"user": "7", "text": "water the plants"}')
        ran = dev.expect("-> REMIND (scheduled)")
        assert "-> KeyExpiry (expiry)" in ran
        assert "[info] tpl: reminder: water the plants" in ran
        assert dev.expect("ok tpl:")[-1].endswith('ok tpl: "water the plants"')
        dev.send(":timers")
        dev.expect("no pending timers")
        assert dev.close() == 0  # end of input stops it
    finally:
        dev.process.kill()


def test_dev_prints_the_discord_calls_it_would_make(tmp_path: Path) -> None:
    template = folder(tmp_path, """\
return {
  MESSAGE_CREATE = function(ctx, event)
    ctx.discord.send_message({channel_id = event.data.channel_id, content = "hello"})
  end,
}
""")
    dev = Dev(str(template), "--tenant", "guild:1100000000000000042")
    try:
        dev.expect("loaded tpl")
        sample = ROOT / "examples" / "welcome"
        assert sample.is_dir()
        dev.send('MESSAGE_CREATE {"channel_id": "1100000000000000777", "guild_id": '
                 '"1100000000000000042", "author": {"id": "80351110224678912"}}')
        line = dev.expect("discord (not sent)")[-1]
        assert line == ('   discord (not sent): POST /channels/1100000000000000777/messages '
                        '{"content": "hello"}')
        assert dev.close() == 0
    finally:
        dev.process.kill()


def test_dev_on_the_real_clock_fires_an_expiry_when_it_is_due(tmp_path: Path) -> None:
    template = folder(tmp_path, """\
return {
  GO = function(ctx, event)
    ctx.kv.set("soon", "ding", {ttl = 1})
    return "set"
  end,
  KeyExpiry = function(ctx, event) return event.data.value end,
}
""")
    dev = Dev(str(template))
    try:
        dev.expect("loaded tpl (v1)")
        dev.send("GO")
        assert "1 timer(s) pending" in dev.expect("timer(s) pending")[-1]
        fired = dev.expect('ok tpl: "ding"')  # the prompt is idle: the clock fires it
        assert "-> KeyExpiry (expiry)" in fired
        dev.send(":quit")
        assert dev.close() == 0
    finally:
        dev.process.kill()


def test_dev_refuses_bad_limits_as_exec_does(tmp_path: Path) -> None:
    template = folder(tmp_path, "return {}")
    for flags in (["--cpu", "0"], ["--memory", "lots"], ["--tenant", "nobody"]):
        done = moonshard("dev", str(template), *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert "Traceback" not in done.stderr
