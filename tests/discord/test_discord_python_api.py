"""The Python API: the README's hikari bot run as written against the fake Discord, and what a
handed REST client can and cannot do."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from moonshard.contracts.wire import Configure, WireCodec
from moonshard.contracts.worker import WorkerConfig
from moonshard.discord import DiscordConfig
from moonshard.discord.recorder import RecordingRest
from moonshard.engine import Engine
from moonshard.errors import ConfigurationError
from moonshard.worker.core import _discord_config
from tests.fakediscord import FakeDiscord

ROOT = Path(__file__).resolve().parents[2]


def readme_bot() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    [bot] = [block for block in blocks if block.startswith('"""bot.py')]
    return bot


def test_the_readme_bot_runs_against_a_discord_stand_in(tmp_path: Path,
                                                        fake: FakeDiscord) -> None:
    (tmp_path / "bot.py").write_text(readme_bot())
    guild, channel = "81384788765712384", "81384788765712385"
    fake.add_guild(guild, channels=(channel,))
    env = {**os.environ, "DISCORD_TOKEN": fake.token, "DISCORD_API_URL": fake.api_url,
           "GUILD_ID": guild}
    with (tmp_path / "bot.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "bot.py"], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        fake.wait_until(lambda: fake.connected() >= 1, timeout=60)
        fake.push("MESSAGE_CREATE", {"id": "5", "guild_id": guild, "channel_id": channel,
                                     "content": "!ping", "author": {"id": "77"}})
        reply = fake.wait_for(lambda r: r.route == f"POST /channels/{channel}/messages")
        assert reply.body["content"] == "pong"
        assert reply.headers["Authorization"] == f"Bot {fake.token}"
        process.send_signal(signal.SIGINT)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = (tmp_path / "bot.log").read_text()
    assert "running; Ctrl-C to stop" in output, output
    # The bot's own "pong" came back as a MESSAGE_CREATE and was dropped: one reply only.
    assert len(fake.made("POST", f"/channels/{channel}/messages")) == 1, output


async def test_a_handed_rest_client_cannot_reach_worker_processes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="thread workers only"):
        async with Engine.open(f"sqlite:///{tmp_path / 'db'}", topology="process", workers=1,
                               discord=DiscordConfig.of_rest(RecordingRest())):
            pass


def test_the_token_travels_in_the_worker_config_but_never_in_its_repr() -> None:
    config = WorkerConfig(0, "sqlite:///x", discord=DiscordConfig(
        token="secret-token", api_url="http://127.0.0.1:1/api/v10"))
    assert "secret-token" not in repr(config)
    codec = WireCodec()
    frame = codec.decode(codec.encode(Configure(config)))
    assert isinstance(frame, Configure)
    back = frame.config
    assert "secret-token" not in repr(back)
    # What a worker process makes of it (core.WorkerCore reads it so).
    assert _discord_config(back.discord) == config.discord
