"""How a worker reaches Discord: the bot token and the REST base URL, or an in-process client."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moonshard.discord.api import DiscordRest

__all__ = ["DEFAULT_API_URL", "DiscordConfig"]

DEFAULT_API_URL = "https://discord.com/api/v10"


@dataclasses.dataclass(frozen=True, slots=True)
class DiscordConfig:
    """Discord settings a worker is given.

    With ``token`` a worker builds its own REST client to ``api_url`` (in its own process or
    thread). ``rest`` is a transport the caller already runs (the Python API handing over its
    bot's REST client); it cannot leave the process, so it needs the thread topology.
    """

    token: str | None = dataclasses.field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    rest: DiscordRest | None = dataclasses.field(default=None, repr=False, compare=False)
    # The bot's user id when it is not read from the token.
    user_id: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ValueError("a Discord token must not be empty")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"the Discord API URL must be http(s)://..., got {self.api_url!r}")

    @property
    def bot_user_id(self) -> str | None:
        """The bot's user id: given, or read from the token's first part (Discord's token
        format)."""
        if self.user_id is not None or self.token is None:
            return self.user_id
        from hikari.applications import get_token_id  # noqa: PLC0415 - hikari is heavy

        try:
            return str(int(get_token_id(self.token)))
        except ValueError:
            return None

    @classmethod
    def of_rest(cls, client: object, *, bot_user_id: str | int | None = None) -> DiscordConfig:
        """Shares a REST client this process already runs: a ``DiscordRest``, or hikari's
        REST client (``bot.rest`` of a ``hikari.GatewayBot``). ``bot_user_id`` lets the
        engine drop the bot's own messages fed to ``ingest_gateway``."""
        from moonshard.discord.api import DiscordRest  # noqa: PLC0415

        if not isinstance(client, DiscordRest):
            from moonshard.discord.rest import HikariRest  # noqa: PLC0415 - hikari is heavy

            client = HikariRest(client)  # type: ignore[arg-type]
        assert isinstance(client, DiscordRest)
        return cls(rest=client, user_id=None if bot_user_id is None else str(bot_user_id))

    def to_wire(self) -> dict[str, Any]:
        if self.rest is not None:
            raise ValueError("a REST client handed to the engine cannot reach a worker "
                             "process: give a token and API URL, or use the thread topology")
        return {"token": self.token, "api_url": self.api_url, "user_id": self.user_id}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> DiscordConfig:
        return cls(token=wire.get("token"), api_url=str(wire.get("api_url", DEFAULT_API_URL)),
                   user_id=wire.get("user_id"))
