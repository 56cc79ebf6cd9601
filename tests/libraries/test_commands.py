"""@moonshard/commands through the real sandbox, with Discord-shaped INTERACTION_CREATE payloads.

Most tests hand the router a ``send`` that records its answers (ctx.discord is another part's),
and run through the local engine with a real SQLite kv for cooldowns and rollbacks; one test
checks that the default ``send`` reaches ``ctx.discord.respond`` with the right arguments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from moonshard.errors import TemplateError
from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.localrun import LocalRunner
from moonshard.sandbox import run_inline
from moonshard.tenants import TenantId
from tests.conftest import Harness, RecordingCapability
from tests.libraries.payloads import MASON, NELLY, command, component, option

ROUTER = r"""
local commands = require("@moonshard/commands")
local duration = require("@moonshard/duration")
local sent, seen = {}, {}

-- Records each answer instead of sending it (ctx.discord is not under test here).
local router = commands.router{send = function(ctx, call, args)
  local copy = {call = call, interaction_id = args.interaction.id}
  for key, value in pairs(args) do
    if key ~= "interaction" then copy[key] = value end
  end
  sent[#sent + 1] = copy
  print(call .. ": " .. tostring(args.content))
  return true
end}

router:command("ping", function(cmd) return "pong" end)

router:command("echo", {options = {
  text = {type = "string", required = true, max = 20},
  times = {type = "integer", default = 1, min = 1, max = 5},
  loud = "boolean",
  target = "user",
}}, function(cmd)
  local a = cmd.args
  seen.times_type = math.type(a.times)
  seen.target = a.target and cmd.resolved.users[a.target].username or false
  local text = a.loud and a.text:upper() or a.text
  return {content = string.rep(text, a.times, " "), ephemeral = a.loud == false}
end)

router:command("whoami", function(cmd)
  seen.user_id, seen.guild_id, seen.in_member = cmd.user_id, cmd.guild_id or false,
    cmd.member ~= nil
  return cmd.user.username
end)

router:command("config set", {options = {key = "string", value = "string"}}, function(cmd)
  return cmd.name .. ": " .. cmd.args.key .. "=" .. cmd.args.value
end)

router:command("mod", function(cmd)
  return "mod, then " .. tostring(cmd.subcommand) .. " on " .. cmd.args.user
end)

router:command("remind", {
  options = {["in"] = {type = "duration", required = true, min = "1m", max = "7d"},
             what = "string"},
  cooldown = "30s",
}, function(cmd)
  cmd.ctx.kv.set("reminder:" .. cmd.user_id, cmd.args.what or "something",
                 {ttl = cmd.args["in"]})
  return "I will remind you in " .. duration.format(cmd.args["in"], {long = true}) .. "."
end)

router:command("daily", {options = {bad = "boolean"}, cooldown = 60}, function(cmd)
  if cmd.args.bad then cmd:fail("Not today.") end
  return "Claimed!"
end)

router:command("crash", function(cmd)
  cmd.ctx.kv.set("written-before-the-crash", true)
  local missing = nil
  return missing.field
end)

router:command("twice", function(cmd)
  cmd:reply("first")
  cmd:reply_ephemeral("second")
end)

router:command("silent", function(cmd) end)

router:command("strict", {options = {n = "integer"}}, function(cmd) return "never" end)

return {
  INTERACTION_CREATE = function(ctx, event)
    sent, seen = {}, {}
    local routed = router:dispatch(ctx, event)
    return {routed = routed or false, sent = sent, seen = seen,
            crashed = ctx.kv.get("written-before-the-crash") or false}
  end,
}
"""


class RouterRig:
    """The ROUTER template run by the local engine against one SQLite file."""

    def __init__(self, tmp_path: Path) -> None:
        self.logs: list[tuple[str, str, str]] = []
        self.runner = LocalRunner(TenantId.guild(1100000000000000042), Limits(cpu_seconds=2.0),
                                  f"sqlite:///{tmp_path / 'kv.db'}",
                                  lambda *line: self.logs.append(line), run_inline)

    async def run(self, payload: dict[str, Any]) -> Any:
        report = await self.runner.run("router", {"init.lua": ROUTER},
                                       Event("INTERACTION_CREATE", payload))
        return report.results[0]

    async def value(self, payload: dict[str, Any]) -> Any:
        result = await self.run(payload)
        assert result.ok, result.error
        return result.value


@pytest.fixture
def rig(tmp_path: Path) -> RouterRig:
    return RouterRig(tmp_path)


async def test_a_command_that_returns_text_responds_with_it(rig: RouterRig) -> None:
    value = await rig.value(command("ping"))
    assert value["routed"] == "ping"
    assert value["sent"] == [{"call": "respond", "content": "pong",
                              "interaction_id": "1200000000000000001"}]


async def test_typed_options_arrive_as_lua_values(rig: RouterRig) -> None:
    payload = command("echo", [
        option("text", 3, "hi"), option("times", 4, 3), option("loud", 5, True),
        option("target", 6, MASON["id"]),
    ], resolved={"users": {MASON["id"]: MASON}})
    value = await rig.value(payload)
    assert value["sent"] == [{"call": "respond", "content": "HI HI HI", "ephemeral": False,
                              "interaction_id": "1200000000000000001"}]
    assert value["seen"] == {"times_type": "integer", "target": "mason"}


async def test_defaults_fill_options_the_user_left_out(rig: RouterRig) -> None:
    value = await rig.value(command("echo", [option("text", 3, "hi"), option("loud", 5, False)]))
    assert value["sent"][0]["content"] == "hi"
    assert value["sent"][0]["ephemeral"] is True
    assert value["seen"] == {"times_type": "integer", "target": False}


@pytest.mark.parametrize(("options", "answer"), [
    ([], "`text` is required"),
    ([option("text", 3, "x" * 21)], "`text` must be at most 20 characters"),
    ([option("text", 3, "hi"), option("times", 4, 9)], "`times` must be at most 5"),
    ([option("text", 3, "hi"), option("times", 4, 0)], "`times` must be at least 1"),
])
async def test_bad_options_get_an_ephemeral_answer(
        rig: RouterRig, options: list[dict[str, Any]], answer: str) -> None:
    value = await rig.value(command("echo", options))
    assert value["sent"] == [{"call": "respond", "content": answer, "ephemeral": True,
                              "interaction_id": "1200000000000000001"}]


async def test_the_invoker_comes_from_member_in_a_guild_and_user_in_dms(rig: RouterRig) -> None:
    in_guild = await rig.value(command("whoami"))
    assert in_guild["seen"] == {"user_id": NELLY["id"], "guild_id": "1100000000000000042",
                                "in_member": True}
    assert in_guild["sent"][0]["content"] == "nelly"
    in_dm = await rig.value(command("whoami", user=MASON, in_guild=False))
    assert in_dm["seen"] == {"user_id": MASON["id"], "guild_id": False, "in_member": False}
    assert in_dm["sent"][0]["content"] == "mason"


async def test_subcommands_route_by_their_full_path(rig: RouterRig) -> None:
    value = await rig.value(command("config", [
        option("set", 1, options=[option("key", 3, "prefix"), option("value", 3, "!")]),
    ]))
    assert value["routed"] == "config set"
    assert value["sent"][0]["content"] == "config set: prefix=!"


async def test_a_group_falls_back_to_the_nearest_routed_parent(rig: RouterRig) -> None:
    value = await rig.value(command("mod", [
        option("warn", 2, options=[option("add", 1, options=[option("user", 6, MASON["id"])])]),
    ]))
    assert value["routed"] == "mod"
    assert value["sent"][0]["content"] == f"mod, then warn add on {MASON['id']}"


async def test_a_duration_option_is_parsed_and_bounded(rig: RouterRig) -> None:
    value = await rig.value(command("remind", [option("in", 3, "2h30m"),
                                               option("what", 3, "stretch")]))
    assert value["sent"][0]["content"] == "I will remind you in 2 hours 30 minutes."
    bad = await rig.value(command("remind", [option("in", 3, "soonish")],
                                  user=MASON))
    assert bad["sent"][0]["ephemeral"] is True
    assert bad["sent"][0]["content"].startswith('`in`: "soonish" is not a duration')
    short = await rig.value(command("remind", [option("in", 3, "5s")], user=MASON))
    assert short["sent"][0]["content"] == "`in` must be at least 1m"


async def test_cooldowns_are_per_user_and_per_command(rig: RouterRig) -> None:
    first = await rig.value(command("remind", [option("in", 3, "10m")]))
    assert first["sent"][0]["content"] == "I will remind you in 10 minutes."
    again = await rig.value(command("remind", [option("in", 3, "10m")],
                                    interaction_id="1200000000000000002"))
    assert again["sent"][0]["ephemeral"] is True
    assert re.fullmatch(r"⏳ You can use /remind again in (29|30)s\.",
                        again["sent"][0]["content"])
    other_user = await rig.value(command("remind", [option("in", 3, "10m")], user=MASON))
    assert other_user["sent"][0]["content"] == "I will remind you in 10 minutes."
    other_command = await rig.value(command("daily"))
    assert other_command["sent"][0]["content"] == "Claimed!"


async def test_a_failed_command_does_not_start_its_cooldown(rig: RouterRig) -> None:
    refused = await rig.value(command("daily", [option("bad", 5, True)]))
    assert refused["sent"] == [{"call": "respond", "content": "Not today.", "ephemeral": True,
                                "interaction_id": "1200000000000000001"}]
    claimed = await rig.value(command("daily"))
    assert claimed["sent"][0]["content"] == "Claimed!"
    cooling = await rig.value(command("daily"))
    assert "You can use /daily again in" in cooling["sent"][0]["content"]


async def test_a_bug_answers_the_user_and_fails_the_run_so_its_writes_roll_back(
        rig: RouterRig) -> None:
    result = await rig.run(command("crash"))
    assert not result.ok
    assert result.error is not None
    assert re.match(r"init\.lua:\d+: attempt to index a nil value \(local 'missing'\)",
                    result.error)
    assert ("info", "router", "respond: ⚠️ Something went wrong while running /crash.") \
        in rig.logs
    after = await rig.value(command("ping"))
    assert after["crashed"] is False


async def test_later_replies_follow_up(rig: RouterRig) -> None:
    value = await rig.value(command("twice"))
    assert [(s["call"], s["content"], s.get("ephemeral")) for s in value["sent"]] == [
        ("respond", "first", None), ("followup", "second", True)]


async def test_a_command_that_never_replies_is_logged(rig: RouterRig) -> None:
    value = await rig.value(command("silent"))
    assert value["sent"] == []
    assert any("/silent returned without replying" in line[2] for line in rig.logs)


async def test_other_interactions_and_commands_are_left_alone(rig: RouterRig) -> None:
    for payload in (command("not-ours"), component("ping")):
        value = await rig.value(payload)
        assert value == {"routed": False, "sent": [], "seen": [], "crashed": False}


async def test_a_declaration_that_does_not_match_discord_is_the_authors_error(
        rig: RouterRig) -> None:
    result = await rig.run(command("strict", [option("n", 3, "five")]))
    assert not result.ok
    assert result.error == ("commands: option 'n' of /strict is declared as integer, but "
                            "Discord sent a string; make the declaration match the registered "
                            "command")


@pytest.mark.parametrize(("declaration", "wording"), [
    ('r:command("x", {options = {n = "float"}}, f)', "option 'n' of /x has type float"),
    ('r:command("x", {cooldown = "soon"}, f)', 'cooldown of /x: "soon" is not a duration'),
    ('r:command("x")', "/x needs a handler function"),
    ('r:command("x", f); r:command("/x", f)', "/x is routed twice"),
    ('commands.router{messages = {nope = "hi"}}', "unknown message 'nope'"),
])
async def test_bad_declarations_are_refused_at_load_with_the_line(
        harness: Harness, declaration: str, wording: str) -> None:
    source = ('local commands = require("@moonshard/commands")\n'
              "local r, f = commands.router(), function() end\n"
              f"{declaration}\n"
              "return {}")
    with pytest.raises(TemplateError) as caught:
        await harness.load(source)
    assert caught.value.file == "init.lua"
    assert caught.value.line == 3
    assert wording in caught.value.message


DEFAULT_SEND = """
local router = require("@moonshard/commands").router()
router:command("ping", {ephemeral = true}, function(cmd) return "pong" end)
router:command("spin", function(cmd) while true do end end)
return {INTERACTION_CREATE = router:handler()}
"""


async def test_the_default_send_calls_ctx_discord_respond(harness: Harness) -> None:
    await harness.load(DEFAULT_SEND)
    discord = RecordingCapability(answer=True)
    payload = command("ping")
    result = await harness.run("INTERACTION_CREATE", payload, capabilities={"discord": discord})
    assert result.ok, result.error
    assert result.value == "ping"
    assert discord.calls == [("respond", [{"interaction": payload, "content": "pong",
                                           "ephemeral": True}])]


async def test_a_broken_limit_is_not_caught_by_the_router(harness: Harness) -> None:
    await harness.load(DEFAULT_SEND)
    discord = RecordingCapability(answer=True)
    result = await harness.run("INTERACTION_CREATE", command("spin"),
                               capabilities={"discord": discord})
    assert not result.ok
    assert result.limit == "cpu"
    assert discord.calls == []
