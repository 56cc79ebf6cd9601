"""INTERACTION_CREATE payloads shaped as Discord sends them (application commands, type 2)."""

from __future__ import annotations

from typing import Any

GUILD_ID = "1100000000000000042"
CHANNEL_ID = "1100000000000000777"
NELLY = {"id": "80351110224678912", "username": "nelly", "global_name": "Nelly",
         "discriminator": "0", "avatar": "8342729096ea3675442027381ff50dfe",
         "public_flags": 0}
MASON = {"id": "53908232506183680", "username": "mason", "global_name": None,
         "discriminator": "0", "avatar": None, "public_flags": 0}


def option(name: str, kind: int, value: object = None, **more: Any) -> dict[str, Any]:
    """One entry of ``data.options``: 1 subcommand, 2 group, 3 string, 4 integer, ..."""
    out: dict[str, Any] = {"name": name, "type": kind, **more}
    if value is not None:
        out["value"] = value
    return out


def command(name: str, options: list[dict[str, Any]] | None = None, *,
            user: dict[str, Any] = NELLY, in_guild: bool = True,
            resolved: dict[str, Any] | None = None,
            interaction_id: str = "1200000000000000001") -> dict[str, Any]:
    """The ``data`` of an INTERACTION_CREATE for a chat-input command."""
    data: dict[str, Any] = {"id": "1150000000000000003", "name": name, "type": 1}
    if options is not None:
        data["options"] = options
    if resolved is not None:
        data["resolved"] = resolved
    payload: dict[str, Any] = {
        "id": interaction_id, "application_id": "1000000000000000001", "type": 2,
        "data": data, "channel_id": CHANNEL_ID,
        "channel": {"id": CHANNEL_ID, "type": 0, "name": "general"},
        "token": "aW50ZXJhY3Rpb246MTIwMDAwMDAwMDAwMDAwMDAwMTp0b2tlbg", "version": 1,
        "locale": "en-US", "app_permissions": "2248473465835073",
        "entitlements": [], "authorizing_integration_owners": {"0": GUILD_ID},
    }
    if in_guild:
        payload.update({
            "guild_id": GUILD_ID, "guild_locale": "en-US", "context": 0,
            "member": {"user": user, "roles": ["1100000000000000500"], "nick": None,
                       "avatar": None, "joined_at": "2024-03-01T12:00:00.000000+00:00",
                       "premium_since": None, "deaf": False, "mute": False, "flags": 0,
                       "pending": False, "permissions": "2248473465835073",
                       "communication_disabled_until": None},
        })
    else:
        payload.update({"user": user, "context": 1})
    return payload


def component(custom_id: str) -> dict[str, Any]:
    """A button press (type 3): not a command, so a router leaves it alone."""
    payload = command("unused")
    payload["type"] = 3
    payload["data"] = {"custom_id": custom_id, "component_type": 2}
    return payload
