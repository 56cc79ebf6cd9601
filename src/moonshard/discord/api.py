"""What moonshard needs of Discord's REST API: one request at a time, JSON in and JSON out.

``DiscordRest`` is the interface; ``moonshard.discord.rest`` fulfils it with hikari's REST
client (which owns Discord's own rate limits and retries), ``moonshard.discord.recorder`` with
a recorder for ``moonshard exec``. A route is named by hikari's route table
(``hikari.internal.routes``, e.g. ``POST_CHANNEL_MESSAGES``) with its path parameters.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

from moonshard.errors import HostCallError
from moonshard.values import JsonValue

__all__ = ["DiscordError", "DiscordRest", "DiscordUnavailable", "RestCall"]


@dataclasses.dataclass(frozen=True, slots=True)
class RestCall:
    """One REST request: ``route`` names an entry of hikari's route table."""

    route: str
    params: Mapping[str, str]
    body: JsonValue = None
    reason: str | None = None
    query: Mapping[str, str] | None = None
    # Interaction callbacks and webhook calls are authorised by their token, not the bot's.
    bot_auth: bool = True


class DiscordError(HostCallError):
    """Discord answered with an error; the template sees Discord's message and code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        self.status = status
        self.code = code
        self.discord_message = message
        super().__init__(f"Discord refused it (HTTP {status}, code {code}): {message}")


class DiscordUnavailable(HostCallError):
    """Discord cannot be reached, or moonshard has no Discord connection configured."""


class DiscordRest(abc.ABC):
    """Sends REST calls to Discord (or records them)."""

    @abc.abstractmethod
    async def request(self, call: RestCall) -> JsonValue:
        """Sends ``call``; returns Discord's JSON answer (None for 204).

        Raises ``DiscordError`` for an error answer, ``DiscordUnavailable`` when Discord
        cannot be reached.
        """

    async def close(self) -> None:  # noqa: B027 - most transports own nothing
        """Frees what the transport opened."""
