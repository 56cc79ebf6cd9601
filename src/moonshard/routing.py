"""Which tenant a raw Discord gateway dispatch belongs to (SERVICE.md's routing rules)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from moonshard.tenants import TenantId

__all__ = ["Route", "route_gateway"]


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """Where a dispatch goes: a tenant, or the reason it is dropped."""

    tenant: TenantId | None
    dropped: str | None = None


def _snowflake(value: object) -> str | None:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return text if text.isdigit() and int(text) > 0 else None


def route_gateway(payload: Mapping[str, object]) -> Route:
    """Routes ``{"t": name, "d": data, ...}``; raises ValueError for a malformed payload."""
    name = payload.get("t")
    data = payload.get("d")
    if not isinstance(name, str) or not name:
        raise ValueError("a gateway dispatch needs a string 't' (the event name)")
    if not isinstance(data, dict):
        raise ValueError("a gateway dispatch needs an object 'd' (the event data)")
    if name == "INTERACTION_CREATE":
        owners = data.get("authorizing_integration_owners")
        if isinstance(owners, dict) and owners:
            # Discord sends "0" as the guild install's value when used in the bot's DMs.
            guild = _snowflake(owners.get("0"))
            if guild is not None:
                return Route(TenantId.guild(guild))
            user = _snowflake(owners.get("1"))
            if user is not None:
                return Route(TenantId.user(user))
    guild_id = _snowflake(data.get("guild_id"))
    if guild_id is not None:
        return Route(TenantId.guild(guild_id))
    return Route(None, dropped=f"{name} has no guild_id and no installing owner to route it to")
