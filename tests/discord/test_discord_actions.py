"""``ctx.discord`` through a real engine and hikari's REST client against the fake Discord:
routes, bodies, the token, audit-log reasons, scope, limits, buckets, interactions."""

from __future__ import annotations

import asyncio
import random

from moonshard.engine import Engine
from moonshard.events import Event
from moonshard.tenants import TenantId
from tests.fakediscord import FakeDiscord

ACTIONS = """
return {
  MESSAGE_CREATE = function(ctx, event) end,
  CHANNEL_CREATE = function(ctx, event) end,
  GUILD_ROLE_CREATE = function(ctx, event) end,
  RUN = function(ctx, event)
    local call = ctx.discord[event.data.call]
    return call(event.data.args)
  end,
  TRY = function(ctx, event)
    local results = {}
    for i = 1, event.data.times do
      local ok, err = pcall(ctx.discord[event.data.call], event.data.args)
      results[i] = ok and "ok" or err
    end
    return results
  end,
}
"""


def snowflake() -> str:
    return str(random.randrange(10**17, 10**18))


async def run(engine: Engine, tenant: TenantId, call: str, args: object) -> dict[str, object]:
    results = await engine.dispatch(tenant, Event("RUN", {"call": call, "args": args}))
    assert len(results) == 1
    return results[0].to_json()


async def guild_with_template(engine: Engine, fake: FakeDiscord, **world: tuple[str, ...],
                              ) -> tuple[TenantId, str]:
    guild = snowflake()
    fake.add_guild(guild, **world)
    tenant = TenantId.guild(guild)
    await engine.templates.put(tenant, "actions", {"init.lua": ACTIONS})
    return tenant, guild


async def test_send_message_reaches_discord_with_route_body_and_token(
        engine: Engine, fake: FakeDiscord) -> None:
    channel = snowflake()
    tenant, _ = await guild_with_template(engine, fake, channels=(channel,))
    result = await run(engine, tenant, "send_message", {
        "channel_id": channel, "content": "hello", "embeds": [{"title": "t"}]})
    assert result["ok"], result
    value = result["value"]
    assert isinstance(value, dict)
    assert value["content"] == "hello"
    assert value["channel_id"] == channel
    assert isinstance(value["id"], str)
    [sent] = fake.made("POST", f"/channels/{channel}/messages")
    assert sent.body == {"content": "hello", "embeds": [{"title": "t"}]}
    assert sent.headers["Authorization"] == f"Bot {fake.token}"


async def test_reply_to_builds_a_message_reference(engine: Engine, fake: FakeDiscord) -> None:
    channel, message = snowflake(), snowflake()
    tenant, guild = await guild_with_template(engine, fake, channels=(channel,))
    result = await run(engine, tenant, "send_message", {
        "channel_id": channel, "content": "re", "reply_to": message})
    assert result["ok"], result
    [sent] = fake.made("POST", f"/channels/{channel}/messages")
    assert sent.body["message_reference"] == {"message_id": message, "channel_id": channel,
                                              "guild_id": guild, "fail_if_not_exists": False}


async def test_ban_sends_its_reason_to_the_audit_log(engine: Engine, fake: FakeDiscord) -> None:
    user = snowflake()
    tenant, guild = await guild_with_template(engine, fake)
    result = await run(engine, tenant, "ban", {"user_id": user, "reason": "raid: spam links ü",
                                               "delete_message_seconds": 3600})
    assert result == {"template": "actions", "ok": True, "value": True}
    [ban] = fake.made("PUT", f"/guilds/{guild}/bans/{user}")
    assert ban.reason == "raid: spam links ü"
    assert ban.body == {"delete_message_seconds": 3600}


async def test_moderation_without_a_reason_is_refused_before_sending(
        engine: Engine, fake: FakeDiscord) -> None:
    user = snowflake()
    tenant, guild = await guild_with_template(engine, fake)
    for call in ("ban", "kick", "unban"):
        result = await run(engine, tenant, call, {"user_id": user})
        assert not result["ok"]
        assert f"discord.{call}: reason is required" in str(result["error"])
    result = await run(engine, tenant, "ban", {"user_id": user, "reason": "x" * 513})
    assert "at most 512" in str(result["error"])
    assert not [r for r in fake.requests if guild in r.path]


async def test_a_channel_of_another_guild_is_refused(engine: Engine, fake: FakeDiscord) -> None:
    theirs = snowflake()
    tenant, _ = await guild_with_template(engine, fake)
    fake.add_guild(snowflake(), channels=(theirs,))
    result = await run(engine, tenant, "send_message", {"channel_id": theirs, "content": "x"})
    assert "discord.send_message: channel " + theirs + " is not in this guild" in \
        str(result["error"])
    # Only the lookup that found where the channel is; nothing was posted.
    assert [r.route for r in fake.requests] == [f"GET /channels/{theirs}"]
    # Known now: refused again without any request.
    result = await run(engine, tenant, "delete_message", {
        "channel_id": theirs, "message_id": snowflake(), "reason": "r"})
    assert "is not in this guild" in str(result["error"])
    assert len(fake.requests) == 1


async def drained(engine: Engine) -> None:
    while engine.background_dispatches:  # noqa: ASYNC110 - the engine offers a count only
        await asyncio.sleep(0.01)


async def test_a_channel_seen_in_another_guilds_event_is_refused_without_a_request(
        engine: Engine, fake: FakeDiscord) -> None:
    tenant, _ = await guild_with_template(engine, fake)
    other, theirs = snowflake(), snowflake()
    await engine.templates.put(TenantId.guild(other), "actions", {"init.lua": ACTIONS})
    # A gateway message in the other guild's channel teaches the worker where that channel is.
    await engine.ingest_gateway({"t": "MESSAGE_CREATE", "d": {
        "id": snowflake(), "guild_id": other, "channel_id": theirs, "content": "hi",
        "author": {"id": snowflake()}}})
    await drained(engine)
    result = await run(engine, tenant, "add_reaction", {
        "channel_id": theirs, "message_id": snowflake(), "emoji": "👍"})
    assert "is not in this guild" in str(result["error"])
    assert fake.requests == []


async def test_gateway_events_teach_channels_and_roles(engine: Engine,
                                                      fake: FakeDiscord) -> None:
    channel, role, user = snowflake(), snowflake(), snowflake()
    tenant, guild = await guild_with_template(engine, fake, channels=(channel,), roles=(role,),
                                              members=(user,))
    await engine.ingest_gateway({"t": "CHANNEL_CREATE", "d": {
        "id": channel, "type": 0, "guild_id": guild, "name": "new"}})
    await engine.ingest_gateway({"t": "GUILD_ROLE_CREATE", "d": {
        "guild_id": guild, "role": {"id": role, "name": "mods"}}})
    await drained(engine)
    assert (await run(engine, tenant, "send_message", {"channel_id": channel,
                                                       "content": "x"}))["ok"]
    assert (await run(engine, tenant, "add_role", {"user_id": user, "role_id": role,
                                                   "reason": "r"}))["ok"]
    # Neither needed a lookup.
    assert [r.method for r in fake.requests] == ["POST", "PUT"]


async def test_a_tenants_own_events_cannot_teach_where_a_channel_is(
        engine: Engine, fake: FakeDiscord) -> None:
    tenant, guild = await guild_with_template(engine, fake)
    theirs = snowflake()
    fake.add_guild(snowflake(), channels=(theirs,))
    # What a tenant token could post: a "message" claiming the channel is in its own guild.
    await engine.dispatch(tenant, Event("MESSAGE_CREATE", {"guild_id": guild,
                                                           "channel_id": theirs}))
    result = await run(engine, tenant, "send_message", {"channel_id": theirs, "content": "x"})
    assert "is not in this guild" in str(result["error"])
    assert fake.made("POST", f"/channels/{theirs}/messages") == []


async def test_roles_are_checked_to_belong_to_the_guild(engine: Engine,
                                                        fake: FakeDiscord) -> None:
    role, user = snowflake(), snowflake()
    tenant, guild = await guild_with_template(engine, fake, roles=(role,), members=(user,))
    ok = await run(engine, tenant, "add_role", {"user_id": user, "role_id": role,
                                                "reason": "verified"})
    assert ok["ok"], ok
    [put] = fake.made("PUT", f"/guilds/{guild}/members/{user}/roles/{role}")
    assert put.reason == "verified"
    refused = await run(engine, tenant, "remove_role", {"user_id": user,
                                                        "role_id": snowflake(), "reason": "r"})
    assert "discord.remove_role: role" in str(refused["error"])
    assert "is not in this guild" in str(refused["error"])


async def test_content_and_embed_limits(engine: Engine, fake: FakeDiscord) -> None:
    channel = snowflake()
    tenant, _ = await guild_with_template(engine, fake, channels=(channel,))
    too_long = await run(engine, tenant, "send_message",
                         {"channel_id": channel, "content": "x" * 2001})
    assert "content is 2001 characters; at most 2000" in str(too_long["error"])
    many = await run(engine, tenant, "send_message",
                     {"channel_id": channel, "embeds": [{"title": "t"}] * 11})
    assert "11 embeds; at most 10" in str(many["error"])
    heavy = await run(engine, tenant, "send_message", {
        "channel_id": channel, "embeds": [{"description": "x" * 4000},
                                          {"description": "y" * 2001}]})
    assert "6001 characters; at most 6000" in str(heavy["error"])
    empty = await run(engine, tenant, "send_message", {"channel_id": channel})
    assert "content, embeds or components is required" in str(empty["error"])
    typo = await run(engine, tenant, "send_message", {"channel": channel, "content": "x"})
    assert "unknown argument channel" in str(typo["error"])
    assert fake.made("POST", f"/channels/{channel}/messages") == []


async def test_the_moderation_bucket_trips_with_bucket_and_wait(
        engine: Engine, fake: FakeDiscord) -> None:
    tenant, guild = await guild_with_template(engine, fake)
    results = await engine.dispatch(tenant, Event("TRY", {
        "call": "ban", "times": 7, "args": {"user_id": snowflake(), "reason": "raid"}}))
    outcomes = results[0].value
    assert isinstance(outcomes, list)
    assert outcomes[:5] == ["ok"] * 5
    for refused in outcomes[5:]:
        assert "rate limited: discord.moderation, retry in " in str(refused)
        wait = float(str(refused).rsplit("retry in ", 1)[1].split(" s")[0])
        assert 0 < wait <= 30
    assert len([r for r in fake.requests if r.path.startswith(f"/guilds/{guild}/bans/")]) == 5


async def test_discord_errors_reach_the_template_with_message_and_code(
        engine: Engine, fake: FakeDiscord) -> None:
    tenant, _ = await guild_with_template(engine, fake)
    result = await run(engine, tenant, "kick", {"user_id": snowflake(), "reason": "r"})
    assert "Unknown Member" in str(result["error"])
    assert "10007" in str(result["error"])
    missing = await run(engine, tenant, "get_member", {"user_id": snowflake()})
    assert missing == {"template": "actions", "ok": True, "value": None}
    assert (await run(engine, tenant, "get_channel", {"channel_id": snowflake()}))["value"] \
        is None


async def test_reads_answer_discords_json(engine: Engine, fake: FakeDiscord) -> None:
    user, role, channel = snowflake(), snowflake(), snowflake()
    tenant, guild = await guild_with_template(engine, fake, members=(user,), roles=(role,),
                                              channels=(channel,))
    member = (await run(engine, tenant, "get_member", {"user_id": user}))["value"]
    assert isinstance(member, dict)
    assert member["user"] == {"id": user, "username": f"u{user}"}
    roles = (await run(engine, tenant, "get_roles", None))["value"]
    assert isinstance(roles, list)
    assert {r["id"] for r in roles} == {guild, role}
    got = (await run(engine, tenant, "get_guild", None))["value"]
    assert isinstance(got, dict)
    assert got["id"] == guild
    found = (await run(engine, tenant, "get_channel", {"channel_id": channel}))["value"]
    assert isinstance(found, dict)
    assert found["guild_id"] == guild
    timed = await run(engine, tenant, "timeout", {"user_id": user, "seconds": 60,
                                                  "reason": "calm down"})
    assert isinstance(timed["value"], dict)
    assert timed["value"]["communication_disabled_until"]


def interaction(user: str, guild: str | None = None) -> dict[str, object]:
    data: dict[str, object] = {
        "id": snowflake(), "token": "tok-" + snowflake(), "application_id": "777",
        "type": 2, "data": {"name": "ping"}, "authorizing_integration_owners": {"1": user},
        "channel_id": snowflake()}
    if guild is not None:
        data["guild_id"] = guild
        data["member"] = {"user": {"id": user}}
    else:
        data["user"] = {"id": user}
    return data


INTERACTIONS = """
return {
  INTERACTION_CREATE = function(ctx, event)
    if event.data.data.name == "slow" then
      local t = os.clock() + 3.2
      while os.clock() < t do end
    end
    ctx.discord.respond{interaction = event.data, content = "pong", ephemeral = true}
    local msg = ctx.discord.followup{interaction = event.data, content = "more"}
    local ok, err = pcall(ctx.discord.send_message, {channel_id = event.data.channel_id,
                                                    content = "x"})
    return {followup = msg.id, send = err}
  end,
  OTHER = function(ctx, event)
    return {pcall(ctx.discord.respond, {interaction = event.data.interaction, content = "x"})}
  end,
}
"""


async def test_a_user_install_interaction_is_answered_through_respond(
        engine: Engine, fake: FakeDiscord) -> None:
    user = snowflake()
    tenant = TenantId.user(user)
    await engine.templates.put(tenant, "commands", {"init.lua": INTERACTIONS})
    data = interaction(user, guild=snowflake())
    outcome = await engine.ingest_gateway({"op": 0, "t": "INTERACTION_CREATE", "s": 3,
                                           "d": data})
    assert outcome.tenant == tenant
    callback = await asyncio.to_thread(
        fake.wait_for, lambda r: r.path == f"/interactions/{data['id']}/{data['token']}/callback")
    assert callback.body == {"type": 4, "data": {"content": "pong", "flags": 64}}
    assert "Authorization" not in callback.headers  # answered with the interaction's token
    followup = await asyncio.to_thread(
        fake.wait_for, lambda r: r.path == f"/webhooks/777/{data['token']}")
    assert followup.body == {"content": "more"}
    assert followup.query == {"wait": "true"}
    # The user tenant could not post to the guild's channel.
    await drained(engine)  # the interaction's run has ended
    assert fake.made("POST", f"/channels/{data['channel_id']}/messages") == []


async def test_a_user_tenant_cannot_post_or_moderate(engine: Engine, fake: FakeDiscord) -> None:
    user = TenantId.user(snowflake())
    await engine.templates.put(user, "actions", {"init.lua": ACTIONS})
    for call, args in (("send_message", {"channel_id": snowflake(), "content": "x"}),
                       ("ban", {"user_id": snowflake(), "reason": "r"}),
                       ("get_guild", None)):
        result = await run(engine, user, call, args)
        assert f"discord.{call}: a user tenant can only respond to and follow up on" in \
            str(result["error"])
    assert fake.requests == []


async def test_only_interactions_routed_to_the_tenant_can_be_answered(
        engine: Engine, fake: FakeDiscord) -> None:
    user = snowflake()
    tenant = TenantId.user(user)
    await engine.templates.put(tenant, "commands", {"init.lua": INTERACTIONS})
    forged = interaction(user)
    results = await engine.dispatch(tenant, Event("OTHER", {"interaction": forged}))
    value = results[0].value
    assert isinstance(value, list)
    assert value[0] is False
    assert "was not routed to this tenant" in str(value[1])
    assert fake.requests == []


async def test_a_slow_handler_is_deferred_then_its_respond_edits_the_answer(
        engine: Engine, fake: FakeDiscord) -> None:
    user = snowflake()
    tenant = TenantId.user(user)
    await engine.templates.put(tenant, "commands", {"init.lua": INTERACTIONS})
    data = interaction(user)
    data["data"] = {"name": "slow"}
    results = await engine.dispatch(tenant, Event("INTERACTION_CREATE", data))
    assert results[0].ok, results[0].error
    paths = [(r.method, r.path) for r in fake.requests]
    assert paths[:3] == [("POST", f"/interactions/{data['id']}/{data['token']}/callback"),
                         ("PATCH", f"/webhooks/777/{data['token']}/messages/@original"),
                         ("POST", f"/webhooks/777/{data['token']}")]
    assert fake.requests[0].body == {"type": 5, "data": {}}
    assert fake.requests[1].body == {"content": "pong"}


async def test_the_bots_own_messages_are_dropped_at_the_door(engine: Engine,
                                                             fake: FakeDiscord) -> None:
    guild = snowflake()
    outcome = await engine.ingest_gateway({"t": "MESSAGE_CREATE", "d": {
        "guild_id": guild, "channel_id": snowflake(), "id": snowflake(),
        "author": {"id": fake.bot_id, "bot": True}, "content": "mine"}})
    assert outcome.dropped == "MESSAGE_CREATE was caused by the bot itself"
