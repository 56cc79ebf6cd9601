"""Discord: gateway events in (``gateway``), ``ctx.discord`` actions out (``capability``).

The REST side is behind ``DiscordRest`` (``api``): hikari's REST client in production
(``rest``), a recorder in ``moonshard exec`` (``recorder``).
"""

from __future__ import annotations

from moonshard.discord.api import DiscordError, DiscordRest, DiscordUnavailable, RestCall
from moonshard.discord.capability import DiscordCapability, DiscordHost
from moonshard.discord.config import DEFAULT_API_URL, DiscordConfig

__all__ = [
    "DEFAULT_API_URL",
    "DiscordCapability",
    "DiscordConfig",
    "DiscordError",
    "DiscordHost",
    "DiscordRest",
    "DiscordUnavailable",
    "RestCall",
]
