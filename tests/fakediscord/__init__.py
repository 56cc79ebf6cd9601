"""A fake Discord for tests: REST under ``/api/v10`` and a gateway speaking the real protocol."""

from __future__ import annotations

from tests.fakediscord.server import FakeDiscord, Recorded, bot_token

__all__ = ["FakeDiscord", "Recorded", "bot_token"]
