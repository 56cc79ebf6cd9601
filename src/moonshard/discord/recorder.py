"""A ``DiscordRest`` that sends nothing: it records each call and answers a plausible stand-in
(``moonshard exec``, and trying templates without a bot)."""

from __future__ import annotations

import dataclasses
import itertools
import time

from hikari.internal import routes

from moonshard.discord.api import DiscordRest, RestCall
from moonshard.values import JsonValue

__all__ = ["RecordedCall", "RecordingRest"]


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedCall:
    method: str
    path: str
    body: JsonValue
    reason: str | None

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"method": self.method, "path": self.path}
        if self.body is not None:
            out["body"] = self.body
        if self.reason is not None:
            out["reason"] = self.reason
        return out


class RecordingRest(DiscordRest):
    """Records calls; stand-in answers take ids from a counter, the guild from ``guild_id``."""

    __slots__ = ("_guild_id", "_ids", "calls")

    def __init__(self, guild_id: str | None = None) -> None:
        self._guild_id = guild_id
        self._ids = itertools.count(1)
        self.calls: list[RecordedCall] = []

    def _id(self) -> str:
        # A snowflake of now, so stand-in ids look and sort like Discord's.
        return str(((int(time.time() * 1000) - 1420070400000) << 22) + next(self._ids))

    async def request(self, call: RestCall) -> JsonValue:
        route = getattr(routes, call.route)
        compiled = route.compile(**call.params)
        path = compiled.compiled_path
        if call.query:
            path += "?" + "&".join(f"{key}={value}" for key, value in call.query.items())
        reads = call.route.startswith("GET_")
        if not reads:
            self.calls.append(RecordedCall(compiled.method, path, call.body, call.reason))
        return self._answer(call)

    def _answer(self, call: RestCall) -> JsonValue:
        params, body = call.params, call.body if isinstance(call.body, dict) else {}
        guild = params.get("guild", self._guild_id)
        if call.route in ("POST_CHANNEL_MESSAGES", "PATCH_CHANNEL_MESSAGE",
                          "POST_WEBHOOK_WITH_TOKEN"):
            return {"id": params.get("message") or self._id(),
                    "channel_id": params.get("channel", "0"), "content": body.get("content", ""),
                    "embeds": body.get("embeds", []), "components": body.get("components", []),
                    "author": {"id": "0", "username": "moonshard", "bot": True},
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
        if call.route == "GET_CHANNEL":
            return {"id": params["channel"], "type": 0, "guild_id": self._guild_id,
                    "name": "stand-in"}
        if call.route in ("GET_GUILD_MEMBER", "PATCH_GUILD_MEMBER"):
            member: dict[str, JsonValue] = {"user": {"id": params["user"],
                                                     "username": "stand-in"},
                                            "roles": [], "joined_at": None}
            if "communication_disabled_until" in body:
                member["communication_disabled_until"] = body["communication_disabled_until"]
            return member
        if call.route == "GET_GUILD":
            return {"id": guild, "name": "stand-in guild", "owner_id": "0"}
        if call.route == "GET_GUILD_ROLES":
            return [{"id": guild, "name": "@everyone", "position": 0}]
        return None
