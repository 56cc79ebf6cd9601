"""End to end: a real ``moonshard serve`` (thread and process topologies) connected to the
fake Discord through ``DISCORD_API_URL`` -- gateway in, hikari's REST out."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakediscord import FakeDiscord
from tests.service.service_support import MOONSHARD, Served, serving

BOT = """
local function try(f, args)
  local ok, err = pcall(f, args)
  return ok and "ok" or err
end

return {
  MESSAGE_CREATE = function(ctx, event)
    local d = event.data
    ctx.kv.incr("seen")
    ctx.kv.set("last_author", event.author)
    if d.content == "!ping" then
      ctx.discord.send_message{channel_id = d.channel_id, content = "pong", reply_to = d.id}
    elseif d.content == "!ban" then
      ctx.discord.ban{user_id = d.mentions[1].id, reason = "banned by " .. event.author}
    elseif d.content == "!ban-quietly" then
      ctx.kv.set("result", try(ctx.discord.ban, {user_id = d.mentions[1].id}))
    elseif d.content == "!elsewhere" then
      ctx.kv.set("result", try(ctx.discord.send_message,
                               {channel_id = d.mentions[1].id, content = "hi"}))
    elseif d.content == "!raid" then
      local results = {}
      for i = 1, 6 do
        results[i] = try(ctx.discord.kick, {user_id = tostring(1000 + i), reason = "raid"})
      end
      ctx.kv.set("result", results)
    end
  end,
}
"""

COMMANDS = """
return {
  INTERACTION_CREATE = function(ctx, event)
    ctx.discord.respond{interaction = event.data, content = "hello " .. event.author}
    local ok, err = pcall(ctx.discord.send_message, {channel_id = event.data.channel_id,
                                                    content = "not allowed"})
    ctx.kv.set("post", err)
  end,
}
"""


def snowflake() -> str:
    return str(random.randrange(10**17, 10**18))


def wait_for_value(client: httpx.Client, tenant: str, key: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/tenants/{tenant}/kv/default/{key}")
        if response.status_code == 200:
            return response.json()["value"]
        assert time.monotonic() < deadline, f"{key} of {tenant} never appeared"
        time.sleep(0.05)


class World:
    """A served moonshard, the fake Discord it is connected to, and an admin client."""

    def __init__(self, fake: FakeDiscord, served: Served) -> None:
        self.fake = fake
        self.served = served
        self.admin = served.client()

    def guild(self, template: str = BOT) -> tuple[str, str, str]:
        """A new guild with the bot template; its tenant, id and one channel."""
        guild, channel = snowflake(), snowflake()
        self.fake.add_guild(guild, channels=(channel,), members=tuple(str(1000 + i)
                                                                      for i in range(1, 7)))
        tenant = f"guild:{guild}"
        response = self.admin.put(f"/v1/tenants/{tenant}/templates/bot",
                                  json={"files": {"init.lua": template}})
        assert response.status_code == 200, response.text
        return tenant, guild, channel

    def message(self, guild: str, channel: str, content: str, *,
                mentions: tuple[str, ...] = (), author: str | None = None) -> str:
        message_id = snowflake()
        self.fake.push("MESSAGE_CREATE", {
            "id": message_id, "guild_id": guild, "channel_id": channel, "content": content,
            "author": {"id": author or snowflake(), "username": "someone"},
            "mentions": [{"id": user} for user in mentions], "type": 0})
        return message_id


@pytest.fixture(scope="module", params=["thread", "process"])
def world(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with FakeDiscord() as fake:
        folder: Path = tmp_path_factory.mktemp(f"discord-{request.param}")
        env = {"MOONSHARD_DISCORD_TOKEN": fake.token, "MOONSHARD_DISCORD_API_URL": fake.api_url}
        with serving(folder, topology=request.param, workers=2, env=env) as served:
            fake.wait_until(lambda: fake.connected() >= 1)
            world = World(fake, served)
            yield world
            world.admin.close()
            code = served.stop()
            assert code == 0, served.output()
            assert "Traceback" not in served.output(), served.output()


def test_a_gateway_message_runs_send_message_with_route_body_and_token(world: World) -> None:
    _, guild, channel = world.guild()
    message_id = world.message(guild, channel, "!ping")
    sent = world.fake.wait_for(lambda r: r.route == f"POST /channels/{channel}/messages")
    assert sent.body == {"content": "pong", "message_reference": {
        "message_id": message_id, "channel_id": channel, "guild_id": guild,
        "fail_if_not_exists": False}}
    assert sent.headers["Authorization"] == f"Bot {world.fake.token}"


def test_the_bots_own_messages_are_dropped(world: World) -> None:
    tenant, guild, channel = world.guild()
    world.message(guild, channel, "!ping")
    world.fake.wait_for(lambda r: r.route == f"POST /channels/{channel}/messages")
    # The fake echoes the bot's reply as a MESSAGE_CREATE by the bot; a later message by a
    # user is counted after it, so the count shows whether the echo ran.
    world.message(guild, channel, "hello", author="5")
    deadline = time.monotonic() + 30
    while wait_for_value(world.admin, tenant, "last_author") != "5":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert wait_for_value(world.admin, tenant, "seen") == 2
    gateway = world.admin.get("/healthz").json()["gateway"]
    assert gateway["events"]["dropped"]["bot_itself"] >= 1
    assert gateway["bot_user_id"] == world.fake.bot_id


def test_ban_carries_its_reason_and_is_refused_without_one(world: World) -> None:
    tenant, guild, channel = world.guild()
    raider, author = snowflake(), snowflake()
    world.message(guild, channel, "!ban", mentions=(raider,), author=author)
    ban = world.fake.wait_for(lambda r: r.route == f"PUT /guilds/{guild}/bans/{raider}")
    assert ban.reason == f"banned by {author}"
    quiet = snowflake()
    world.message(guild, channel, "!ban-quietly", mentions=(quiet,))
    assert "discord.ban: reason is required" in wait_for_value(world.admin, tenant, "result")
    assert world.fake.made("PUT", f"/guilds/{guild}/bans/{quiet}") == []


def test_a_channel_of_another_guild_is_refused_before_any_post(world: World) -> None:
    tenant, guild, channel = world.guild()
    theirs = snowflake()
    world.fake.add_guild(snowflake(), channels=(theirs,))
    world.message(guild, channel, "!elsewhere", mentions=(theirs,))
    result = wait_for_value(world.admin, tenant, "result")
    assert f"discord.send_message: channel {theirs} is not in this guild" in result
    assert world.fake.made("POST", f"/channels/{theirs}/messages") == []


def test_the_moderation_bucket_trips_with_bucket_and_wait(world: World) -> None:
    tenant, guild, channel = world.guild()
    world.message(guild, channel, "!raid")
    results = wait_for_value(world.admin, tenant, "result")
    assert results[:5] == ["ok"] * 5
    assert "rate limited: discord.moderation, retry in " in results[5]
    kicks = [r for r in world.fake.requests
             if r.method == "DELETE" and r.path.startswith(f"/guilds/{guild}/members/")]
    assert len(kicks) == 5


def test_a_user_install_interaction_is_answered_and_cannot_post(world: World) -> None:
    user = snowflake()
    tenant = f"user:{user}"
    response = world.admin.put(f"/v1/tenants/{tenant}/templates/commands",
                               json={"files": {"init.lua": COMMANDS}})
    assert response.status_code == 200, response.text
    interaction_id, token, channel = snowflake(), f"tok{snowflake()}", snowflake()
    world.fake.push("INTERACTION_CREATE", {
        "id": interaction_id, "token": token, "application_id": world.fake.application_id,
        "type": 2, "data": {"name": "hello"}, "guild_id": snowflake(), "channel_id": channel,
        "member": {"user": {"id": user}}, "authorizing_integration_owners": {"1": user}})
    callback = world.fake.wait_for(
        lambda r: r.route == f"POST /interactions/{interaction_id}/{token}/callback")
    assert callback.body == {"type": 4, "data": {"content": f"hello {user}"}}
    post = wait_for_value(world.admin, tenant, "post")
    assert "a user tenant can only respond to and follow up on" in post
    assert world.fake.made("POST", f"/channels/{channel}/messages") == []


def test_a_gateway_disconnect_is_survived(world: World) -> None:
    tenant, guild, channel = world.guild()
    resumes = world.fake.resumes
    assert world.fake.drop(code=4000) >= 1
    # 4000 lets a client resume its session: hikari does.
    world.fake.wait_until(lambda: world.fake.resumes > resumes and world.fake.connected() >= 1,
                          timeout=60)
    world.message(guild, channel, "!ping")
    world.fake.wait_for(lambda r: r.route == f"POST /channels/{channel}/messages")
    # And once more with the TCP connection cut, no close frame.
    before = world.fake.identifies + world.fake.resumes
    world.fake.drop(code=None)
    world.message(guild, channel, "queued while away")  # replayed on resume
    world.fake.wait_until(lambda: world.fake.identifies + world.fake.resumes > before,
                          timeout=60)
    assert wait_for_value(world.admin, tenant, "seen") >= 1
    deadline = time.monotonic() + 30
    while wait_for_value(world.admin, tenant, "seen") < 2:
        assert time.monotonic() < deadline, "the message sent while away was lost"
        time.sleep(0.05)


def test_healthz_and_metrics_show_the_gateway(world: World) -> None:
    health = world.admin.get("/healthz").json()
    gateway = health["gateway"]
    assert gateway["state"] == "connected"
    assert gateway["shard_count"] == 1
    assert gateway["shards"][0]["connected"] is True
    assert gateway["events"]["received"] >= gateway["events"]["routed"]
    # hikari asked for zlib-stream transport compression, and the fake spoke it.
    assert world.fake.compressed_connections >= 1
    assert world.fake.heartbeats >= 1
    metrics = world.admin.get("/metrics").text
    assert "moonshard_gateway_connected 1.0" in metrics
    assert 'moonshard_gateway_shard_connected{shard="0"} 1.0' in metrics
    assert "moonshard_gateway_events_received_total" in metrics
    assert "moonshard_gateway_events_routed_total" in metrics


def test_a_malformed_token_is_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "MOONSHARD_DATABASE_URL": f"sqlite:///{tmp_path}/db/m.db",
           "MOONSHARD_TOPOLOGY": "thread", "MOONSHARD_WORKERS": "1",
           "MOONSHARD_DISCORD_TOKEN": "not-a-token"}
    done = subprocess.run([*MOONSHARD, "serve"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: MOONSHARD_DISCORD_TOKEN: not a Discord bot token "
                                   "(its first part is the bot's id; copy it from the "
                                   "developer portal)")


def test_bad_intents_are_refused(tmp_path: Path) -> None:
    env = {**os.environ, "MOONSHARD_DATABASE_URL": f"sqlite:///{tmp_path}/db/m.db",
           "MOONSHARD_DISCORD_INTENTS": "guilds,everything"}
    done = subprocess.run([*MOONSHARD, "serve"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "MOONSHARD_DISCORD_INTENTS='guilds,everything': unknown intent 'everything'" in \
        done.stderr


def test_the_library_shards_as_discord_recommends(tmp_path: Path) -> None:
    with FakeDiscord(shards=2) as fake:
        env = {"MOONSHARD_DISCORD_TOKEN": fake.token, "MOONSHARD_DISCORD_API_URL": fake.api_url}
        with serving(tmp_path, topology="thread", workers=1, env=env) as served:
            fake.wait_until(lambda: fake.connected() == 2)
            world = World(fake, served)
            # One guild on each shard ((id >> 22) % 2), each answered.
            guilds: dict[int, tuple[str, str]] = {}
            while len(guilds) < 2:
                _, guild, channel = world.guild()
                guilds.setdefault((int(guild) >> 22) % 2, (guild, channel))
            for guild, channel in guilds.values():
                world.message(guild, channel, "!ping")
                fake.wait_for(lambda r, c=channel: r.route == f"POST /channels/{c}/messages")
            health = world.admin.get("/healthz").json()["gateway"]
            assert health["shard_count"] == 2
            assert sorted(shard["id"] for shard in health["shards"]) == [0, 1]
            world.admin.close()
            assert served.stop() == 0
