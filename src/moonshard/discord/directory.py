"""Which guild a channel or role belongs to: a small cache fed by the gateway events a worker
runs and by REST answers, so scope checks rarely need a request.

Only dispatches that came through ``Engine.ingest_gateway`` (the gateway, or the admin's
``POST /v1/gateway``) teach it: their event ids carry ``GATEWAY_ID_PREFIX``, which no other
event id has (those are hex). A tenant posting its own ``MESSAGE_CREATE`` through the API
cannot make a channel of another guild look like its own, nor its own look like another's.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from moonshard.values import JsonValue

__all__ = ["GATEWAY_ID_PREFIX", "NO_GUILD", "GuildDirectory", "gateway_event_id",
           "is_gateway_event"]

GATEWAY_ID_PREFIX = "gw-"


def gateway_event_id() -> str:
    """The id of an event made from a gateway dispatch."""
    return GATEWAY_ID_PREFIX + uuid.uuid4().hex


def is_gateway_event(event_id: str) -> bool:
    return event_id.startswith(GATEWAY_ID_PREFIX)

NO_GUILD = ""
"""The guild of a channel that belongs to none (a DM)."""


class GuildDirectory:
    """Bounded LRU maps: channel id -> guild id, guild id -> role ids. One per worker."""

    __slots__ = ("_channels", "_max_channels", "_max_guilds", "_roles")

    def __init__(self, *, max_channels: int = 50_000, max_guilds: int = 5_000) -> None:
        self._channels: OrderedDict[str, str] = OrderedDict()
        self._roles: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._max_channels = max_channels
        self._max_guilds = max_guilds

    # -- reading ---------------------------------------------------------------------------
    def guild_of_channel(self, channel_id: str) -> str | None:
        """The channel's guild id, ``NO_GUILD`` for a DM, None when unknown."""
        guild = self._channels.get(channel_id)
        if guild is not None:
            self._channels.move_to_end(channel_id)
        return guild

    def roles_of(self, guild_id: str) -> frozenset[str] | None:
        roles = self._roles.get(guild_id)
        if roles is not None:
            self._roles.move_to_end(guild_id)
        return roles

    # -- learning --------------------------------------------------------------------------
    def channel(self, channel_id: str, guild_id: str | None) -> None:
        self._channels[channel_id] = guild_id or NO_GUILD
        self._channels.move_to_end(channel_id)
        while len(self._channels) > self._max_channels:
            self._channels.popitem(last=False)

    def forget_channel(self, channel_id: str) -> None:
        self._channels.pop(channel_id, None)

    def roles(self, guild_id: str, role_ids: frozenset[str]) -> None:
        self._roles[guild_id] = role_ids
        self._roles.move_to_end(guild_id)
        while len(self._roles) > self._max_guilds:
            self._roles.popitem(last=False)

    def learn_channel_json(self, channel: JsonValue, guild_id: str | None = None) -> None:
        if isinstance(channel, dict) and isinstance(channel.get("id"), str):
            owner = channel.get("guild_id", guild_id)
            self.channel(str(channel["id"]), owner if isinstance(owner, str) else None)

    def learn_roles_json(self, guild_id: str, roles: JsonValue) -> None:
        if isinstance(roles, list):
            self.roles(guild_id, frozenset(str(role["id"]) for role in roles
                                           if isinstance(role, dict) and "id" in role))

    def learn(self, name: str, data: JsonValue) -> None:
        """What a gateway dispatch tells about channels and roles."""
        if not isinstance(data, dict):
            return
        guild = data.get("guild_id")
        guild_id = guild if isinstance(guild, str) else None
        if name == "GUILD_CREATE":
            guild_id = data.get("id") if isinstance(data.get("id"), str) else None  # type: ignore[assignment]
            if guild_id is not None:
                for key in ("channels", "threads"):
                    for channel in _list(data.get(key)):
                        self.learn_channel_json(channel, guild_id)
                self.learn_roles_json(guild_id, data.get("roles"))
            return
        if name in ("CHANNEL_CREATE", "CHANNEL_UPDATE", "THREAD_CREATE", "THREAD_UPDATE"):
            self.learn_channel_json(data)
            return
        if name in ("CHANNEL_DELETE", "THREAD_DELETE") and isinstance(data.get("id"), str):
            self.forget_channel(str(data["id"]))
            return
        if name in ("GUILD_ROLE_CREATE", "GUILD_ROLE_UPDATE", "GUILD_ROLE_DELETE") and guild_id:
            self._roles.pop(guild_id, None)  # re-read when next needed
            return
        channel = data.get("channel_id")
        if isinstance(channel, str) and channel.isdigit() and guild_id is not None:
            # MESSAGE_CREATE, reactions, INTERACTION_CREATE in a guild, ...
            self.channel(channel, guild_id)


def _list(value: JsonValue) -> list[JsonValue]:
    return value if isinstance(value, list) else []
