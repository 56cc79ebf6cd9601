"""``moonshard exec`` records ``ctx.discord`` calls instead of sending them; checks still apply."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TEMPLATE = """
return {
  MESSAGE_CREATE = function(ctx, event)
    local sent = ctx.discord.send_message{channel_id = "10", content = "hi " .. event.data.content}
    ctx.discord.ban{user_id = "99", reason = "spam"}
    local no_reason = {pcall(ctx.discord.kick, {user_id = "99"})}
    local elsewhere = {pcall(ctx.discord.send_message,
                             {channel_id = event.data.channel_id, content = "x"})}
    return {id = sent.id, channel = sent.channel_id, no_reason = no_reason[2],
            elsewhere = elsewhere[2]}
  end,
  INTERACTION_CREATE = function(ctx, event)
    ctx.discord.respond{interaction = event.data, content = "pong"}
    return ctx.discord.followup{interaction = event.data, content = "more"}.content
  end,
}
"""


def exec_template(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "tpl"
    folder.mkdir(exist_ok=True)
    (folder / "init.lua").write_text(TEMPLATE)
    return subprocess.run([sys.executable, "-m", "moonshard", "exec", str(folder), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_exec_records_discord_calls_and_prints_them(tmp_path: Path) -> None:
    # The event is from another guild's channel (55 in guild 2): the tenant is guild:1.
    done = exec_template(tmp_path, "--event", "MESSAGE_CREATE", "--data",
                         json.dumps({"content": "there", "guild_id": "2", "channel_id": "55"}))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    value = out["results"][0]["value"]
    assert value["channel"] == "10"
    assert value["id"].isdigit()
    assert "discord.kick: reason is required" in value["no_reason"]
    assert "discord.send_message: channel 55 is not in this guild" in value["elsewhere"]
    assert out["discord"] == [
        {"method": "POST", "path": "/channels/10/messages", "body": {"content": "hi there"}},
        {"method": "PUT", "path": "/guilds/1/bans/99",
         "body": {"delete_message_seconds": 0}, "reason": "spam"},
    ]
    assert "discord (recorded, not sent): POST /channels/10/messages" in done.stderr
    assert "discord (recorded, not sent): PUT /guilds/1/bans/99 (reason: spam)" in done.stderr


def test_exec_answers_an_interaction_of_a_user_tenant(tmp_path: Path) -> None:
    interaction = {"id": "5", "token": "tok", "application_id": "777", "type": 2,
                   "authorizing_integration_owners": {"1": "8"}, "user": {"id": "8"}}
    done = exec_template(tmp_path, "--event", "INTERACTION_CREATE", "--tenant", "user:8",
                         "--data", json.dumps(interaction))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["results"][0]["value"] == "more"
    assert [(c["method"], c["path"]) for c in out["discord"]] == [
        ("POST", "/interactions/5/tok/callback"), ("POST", "/webhooks/777/tok?wait=true")]
    assert out["discord"][0]["body"] == {"type": 4, "data": {"content": "pong"}}


def test_the_antispam_example_times_out_the_sixth_message(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "antispam"
    state = tmp_path / "state.db"
    outs = []
    for _ in range(6):
        done = subprocess.run(
            [sys.executable, "-m", "moonshard", "exec", str(example), "--event",
             "MESSAGE_CREATE", "--data", f"@{example / 'message.json'}", "--state", str(state),
             "--tenant", "guild:81384788765712384"],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        outs.append(json.loads(done.stdout))
    assert [out["discord"] for out in outs[:5]] == [[]] * 5
    calls = outs[5]["discord"]
    assert [(c["method"], c["path"]) for c in calls] == [
        ("DELETE", "/channels/81384788765712390/messages/1100000000000000001"),
        ("PATCH", "/guilds/81384788765712384/members/80351110224678912"),
        ("POST", "/channels/81384788765712390/messages")]
    assert calls[1]["reason"] == "spam: more than 5 messages in 10 s"
