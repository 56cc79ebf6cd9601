"""Fixtures of the Discord suite: a fake Discord on 127.0.0.1 and an engine pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from moonshard.discord import DiscordConfig
from moonshard.engine import Engine
from tests.fakediscord import FakeDiscord


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord() as discord:
        yield discord


@pytest.fixture
async def engine(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[Engine]:
    async with Engine.open(f"sqlite:///{tmp_path / 'db.sqlite'}", topology="thread", workers=1,
                           discord=DiscordConfig(token=fake.token,
                                                 api_url=fake.api_url)) as running:
        yield running
