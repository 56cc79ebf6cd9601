"""``DiscordCapability`` on its own, with the recording transport and a clock the test moves:
both moderation rates, atomic bucket charging, answering interactions once, the deferral."""

from __future__ import annotations

import re

import pytest

from moonshard.discord.capability import DiscordCapability, DiscordHost
from moonshard.discord.recorder import RecordingRest
from moonshard.errors import HostCallError, LimitExceeded
from moonshard.events import Event
from moonshard.host.ratelimit import GcraLimiter
from moonshard.tenants import TenantId


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


GUILD = TenantId.guild("81384788765712384")


def capability(host: DiscordHost, limiter: GcraLimiter, event: Event | None = None,
               tenant: TenantId = GUILD) -> DiscordCapability:
    return host.open_run(tenant, event or Event("RUN", {}), limiter)


async def test_the_sustained_moderation_rate_also_limits_and_is_named_moderation() -> None:
    clock = Clock()
    limiter = GcraLimiter(clock=clock)
    rest = RecordingRest(GUILD.id)
    cap = capability(DiscordHost(rest), limiter)
    ban = {"user_id": "5", "reason": "raid"}
    # One ban every 6 s is within 5 per 30 s forever, but not within 10 per 75 s (1 per 7.5 s).
    refused = None
    for _ in range(60):
        try:
            await cap.call("ban", [ban])
        except LimitExceeded as error:
            refused = error
            break
        clock.now += 6.0
    assert refused is not None
    assert str(refused).startswith("rate limited: discord.moderation, retry in ")
    assert refused.limit == "rate.discord.moderation"
    assert refused.retry_after is not None
    assert 0 < refused.retry_after <= 7.5


async def test_a_refused_call_takes_nothing_from_any_bucket() -> None:
    clock = Clock()
    limiter = GcraLimiter(clock=clock)
    cap = capability(DiscordHost(RecordingRest(GUILD.id)), limiter)
    for _ in range(5):
        await cap.call("kick", [{"user_id": "5", "reason": "r"}])
    with pytest.raises(LimitExceeded, match=r"discord\.moderation"):
        await cap.call("kick", [{"user_id": "5", "reason": "r"}])
    # The refused kicks did not use up the all-actions bucket: 15 more actions pass.
    for _ in range(15):
        await cap.call("get_guild", [None])
    with pytest.raises(LimitExceeded, match=r"rate limited: discord\.actions, retry in"):
        await cap.call("get_guild", [None])


async def test_interactions_have_their_own_bucket() -> None:
    limiter = GcraLimiter(clock=Clock())
    rest = RecordingRest()
    host = DiscordHost(rest, defer_after=60)
    for n in range(11):
        data = {"id": str(100 + n), "token": f"t{n}", "application_id": "9"}
        cap = capability(host, limiter, Event("INTERACTION_CREATE", data),
                         TenantId.user("8"))
        if n < 10:
            assert await cap.call("respond", [{"interaction": data, "content": "x"}]) is True
        else:
            with pytest.raises(LimitExceeded, match=r"discord\.interactions"):
                await cap.call("respond", [{"interaction": data, "content": "x"}])
        cap.take_effects()


async def test_respond_answers_once_then_followup() -> None:
    host = DiscordHost(RecordingRest(), defer_after=60)
    data = {"id": "100", "token": "tok", "application_id": "9"}
    cap = capability(host, GcraLimiter(), Event("INTERACTION_CREATE", data))
    with pytest.raises(HostCallError, match="no answer yet"):
        await cap.call("followup", [{"interaction": data, "content": "early"}])
    await cap.call("respond", [{"interaction": data, "content": "first"}])
    with pytest.raises(HostCallError, match="answered already; use followup"):
        await cap.call("respond", [{"interaction": data, "content": "again"}])
    message = await cap.call("followup", [{"interaction": data, "content": "then"}])
    assert isinstance(message, dict)
    assert message["content"] == "then"
    cap.take_effects()


async def test_an_explicit_ephemeral_defer_then_respond_edits() -> None:
    rest = RecordingRest()
    host = DiscordHost(rest, defer_after=60)
    data = {"id": "100", "token": "tok", "application_id": "9"}
    cap = capability(host, GcraLimiter(), Event("INTERACTION_CREATE", data))
    assert await cap.call("defer", [{"interaction": data, "ephemeral": True}]) is True
    assert await cap.call("defer", [{"interaction": data}]) is False
    await cap.call("respond", [{"interaction": data, "content": "done", "ephemeral": True}])
    cap.take_effects()
    assert [(c.method, c.path, c.body) for c in rest.calls] == [
        ("POST", "/interactions/100/tok/callback", {"type": 5, "data": {"flags": 64}}),
        ("PATCH", "/webhooks/9/tok/messages/@original", {"content": "done"}),
    ]


async def test_the_automatic_deferral_is_ended_with_the_run() -> None:
    rest = RecordingRest()
    host = DiscordHost(rest, defer_after=0.0)
    data = {"id": "100", "token": "tok", "application_id": "9"}
    cap = capability(host, GcraLimiter(), Event("INTERACTION_CREATE", data))
    cap.take_effects()  # the run ended before the deferral's turn came: nothing sent
    assert rest.calls == []


async def test_arguments_are_checked() -> None:
    cap = capability(DiscordHost(RecordingRest(GUILD.id), stand_in=True), GcraLimiter())
    cases = [
        ("send_message", "x", "takes one table of named arguments"),
        ("send_message", {"content": "x"}, "channel_id is required"),
        ("send_message", {"channel_id": "abc", "content": "x"}, "must be a snowflake"),
        ("timeout", {"user_id": "1", "reason": "r"}, "seconds is required"),
        ("timeout", {"user_id": "1", "seconds": 2419201, "reason": "r"},
         "seconds must be from 0 to 2419200"),
        ("ban", {"user_id": "1", "reason": "r", "delete_message_seconds": 604801},
         "delete_message_seconds must be from 0 to 604800"),
        ("ban", {"user_id": "1", "reason": "   "}, "reason must not be blank"),
        ("add_reaction", {"channel_id": "1", "message_id": "2", "emoji": ""}, "emoji must be"),
        ("get_guild", {"guild_id": "1"}, "unknown argument guild_id (it takes no arguments)"),
        ("fly", {}, "no such call"),
    ]
    for call, args, message in cases:
        with pytest.raises(HostCallError, match=re.escape(message)):
            await cap.call(call, [args])
