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
    """Bounded LRU maps of what is known: channel id -> guild id, role id -> guild id. One per
    worker. Only positive facts from Discord: a miss means "ask Discord"."""

    __slots__ = ("_channels", "_max", "_roles")

    def __init__(self, *, max_entries: int = 50_000) -> None:
        self._channels: OrderedDict[str, str] = OrderedDict()
        self._roles: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries

    # -- reading ---------------------------------------------------------------------------
    def guild_of_channel(self, channel_id: str) -> str | None:
        """The channel's guild id, ``NO_GUILD`` for a DM, None when unknown."""
        return _get(self._channels, channel_id)

    def guild_of_role(self, role_id: str) -> str | None:
        return _get(self._roles, role_id)

    # -- learning --------------------------------------------------------------------------
    def channel(self, channel_id: str, guild_id: str | None) -> None:
        _put(self._channels, channel_id, guild_id or NO_GUILD, self._max)

    def forget_channel(self, channel_id: str) -> None:
        self._channels.pop(channel_id, None)

    def role(self, role_id: str, guild_id: str) -> None:
        _put(self._roles, role_id, guild_id, self._max)

    def learn_channel_json(self, channel: JsonValue, guild_id: str | None = None) -> None:
        if isinstance(channel, dict) and isinstance(channel.get("id"), str):
            owner = channel.get("guild_id", guild_id)
            self.channel(str(channel["id"]), owner if isinstance(owner, str) else None)

    def learn_roles_json(self, guild_id: str, roles: JsonValue) -> None:
        for role in _list(roles):
            if isinstance(role, dict) and isinstance(role.get("id"), str):
                self.role(str(role["id"]), guild_id)

    def learn(self, name: str, data: JsonValue) -> None:
        """What a gateway dispatch tells about channels and roles (SERVICE.md routes only
        dispatches with a ``guild_id`` to a guild, so those are what a worker sees)."""
        if not isinstance(data, dict):
            return
        guild = data.get("guild_id")
        guild_id = guild if isinstance(guild, str) and guild.isdigit() else None
        if name in ("CHANNEL_CREATE", "CHANNEL_UPDATE", "THREAD_CREATE", "THREAD_UPDATE"):
            self.learn_channel_json(data)
            return
        if name in ("CHANNEL_DELETE", "THREAD_DELETE") and isinstance(data.get("id"), str):
            self.forget_channel(str(data["id"]))
            return
        if guild_id is None:
            return
        if name in ("GUILD_ROLE_CREATE", "GUILD_ROLE_UPDATE"):
            self.learn_roles_json(guild_id, [data.get("role")])
            return
        if name == "GUILD_ROLE_DELETE" and isinstance(data.get("role_id"), str):
            self._roles.pop(str(data["role_id"]), None)
            return
        channel = data.get("channel_id")
        if isinstance(channel, str) and channel.isdigit():
            # MESSAGE_CREATE, reactions, INTERACTION_CREATE in a guild, ...
            self.channel(channel, guild_id)
        member = data.get("member")
        if isinstance(member, dict):
            for role in _list(member.get("roles")):
                if isinstance(role, str) and role.isdigit():
                    self.role(role, guild_id)


def _get(entries: OrderedDict[str, str], key: str) -> str | None:
    value = entries.get(key)
    if value is not None:
        entries.move_to_end(key)
    return value


def _put(entries: OrderedDict[str, str], key: str, value: str, limit: int) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > limit:
        entries.popitem(last=False)


def _list(value: JsonValue) -> list[JsonValue]:
    return value if isinstance(value, list) else []
