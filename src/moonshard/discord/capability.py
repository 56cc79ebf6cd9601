"""``ctx.discord``: the calls of TEMPLATES.md, checked (arguments, scope, limits) and rate-limited
before anything is sent, then sent through the worker's ``DiscordRest``.

``DiscordHost`` is what a worker holds (the transport, the guild directory, the interaction
book); it opens one ``DiscordCapability`` per handler run. The capability is also a
``RunScope`` only to end the run's automatic deferral of an interaction: Discord actions are
not transactional, a sent message stays sent when the handler fails afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType

from moonshard.contracts.host import Capability, RunScope
from moonshard.discord import checks
from moonshard.discord.api import DiscordError, DiscordRest, DiscordUnavailable, RestCall
from moonshard.discord.config import DiscordConfig
from moonshard.discord.directory import NO_GUILD, GuildDirectory, is_gateway_event
from moonshard.discord.interactions import Answer, InteractionBook, InteractionState
from moonshard.errors import HostCallError, LimitExceeded
from moonshard.events import Event
from moonshard.host.ratelimit import GcraLimiter
from moonshard.store.api import RunEffects
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["AUTO_DEFER_AFTER", "CALLS", "DiscordCapability", "DiscordHost"]

AUTO_DEFER_AFTER = 2.5
"""Seconds after an interaction arrived at which the host defers it if nobody answered."""

_log = logging.getLogger(__name__)
_MAX_TIMEOUT = 28 * 24 * 3600
_MAX_BAN_DELETE = 7 * 24 * 3600
_ACTIONS = ("discord.actions",)
_MODERATION = ("discord.actions", "discord.moderation", "discord.moderation.sustained")
_SEND = ("discord.actions", "discord.send_message")
_INTERACTIONS = ("discord.interactions",)
# The rate families a template sees as one bucket.
_BUCKET_NAMES = MappingProxyType({"discord.moderation.sustained": "discord.moderation"})
_MESSAGE_ARGS = ("content", "embeds", "components")

CALLS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType({
    # call: (arguments it takes, rate families it draws from)
    "send_message": (("channel_id", *_MESSAGE_ARGS, "reply_to", "allowed_mentions"), _SEND),
    "edit_message": (("channel_id", "message_id", *_MESSAGE_ARGS, "allowed_mentions"),
                     _ACTIONS),
    "delete_message": (("channel_id", "message_id", "reason"), _ACTIONS),
    "add_reaction": (("channel_id", "message_id", "emoji"), _ACTIONS),
    "ban": (("user_id", "reason", "delete_message_seconds"), _MODERATION),
    "unban": (("user_id", "reason"), _ACTIONS),
    "kick": (("user_id", "reason"), _MODERATION),
    "timeout": (("user_id", "seconds", "reason"), _ACTIONS),
    "add_role": (("user_id", "role_id", "reason"), _ACTIONS),
    "remove_role": (("user_id", "role_id", "reason"), _ACTIONS),
    "get_member": (("user_id",), _ACTIONS),
    "get_channel": (("channel_id",), _ACTIONS),
    "get_guild": ((), _ACTIONS),
    "get_roles": ((), _ACTIONS),
    "respond": (("interaction", *_MESSAGE_ARGS, "ephemeral", "allowed_mentions"),
                _INTERACTIONS),
    "followup": (("interaction", *_MESSAGE_ARGS, "ephemeral", "allowed_mentions"),
                 _INTERACTIONS),
    # An extension of TEMPLATES.md: defer an interaction now (the host does it by itself
    # 2.5 s after arrival when nobody answered).
    "defer": (("interaction", "ephemeral"), _INTERACTIONS),
})
_USER_CALLS = frozenset({"respond", "followup", "defer"})

LogSink = Callable[[str, str, str], None]
"""(level, template, message) into the tenant's log."""


class DiscordHost:
    """A worker's way to Discord: one transport, one directory, one interaction book."""

    __slots__ = ("book", "defer_after", "directory", "rest", "stand_in")

    def __init__(self, rest: DiscordRest | None, *, defer_after: float = AUTO_DEFER_AFTER,
                 directory: GuildDirectory | None = None,
                 book: InteractionBook | None = None, stand_in: bool = False) -> None:
        self.rest = rest
        # With a recorder (exec): a channel or role nothing is known of is taken to be the
        # tenant's own; one the events placed in another guild is still refused.
        self.stand_in = stand_in
        self.defer_after = defer_after
        self.directory = directory or GuildDirectory()
        self.book = book or InteractionBook()

    @classmethod
    def from_config(cls, config: DiscordConfig | None) -> DiscordHost:
        """A host for a worker: its own REST client from the token (opened on first use, on
        the worker's loop), the in-process transport it was handed, or none."""
        if config is None:
            return cls(None)
        if config.rest is not None:
            return cls(config.rest)
        if config.token is None:
            return cls(None)
        from moonshard.discord.rest import TokenRest  # noqa: PLC0415 - hikari is heavy

        return cls(TokenRest(config.token, config.api_url))

    def open_run(self, tenant: TenantId, event: Event, limiter: GcraLimiter,
                 log: LogSink | None = None, template: str = "-") -> DiscordCapability:
        return DiscordCapability(self, tenant, event, limiter, log, template)

    async def close(self) -> None:
        if self.rest is not None:
            await self.rest.close()


class DiscordCapability(Capability, RunScope):
    """``ctx.discord`` for one handler run of one tenant."""

    __slots__ = ("_defer_task", "_host", "_limiter", "_log", "_template", "_tenant")

    def __init__(self, host: DiscordHost, tenant: TenantId, event: Event,
                 limiter: GcraLimiter, log: LogSink | None = None,
                 template: str = "-") -> None:
        self._host = host
        self._tenant = tenant
        self._limiter = limiter
        self._log = log
        self._template = template
        self._defer_task: asyncio.Task[None] | None = None
        if is_gateway_event(event.id) or host.stand_in:
            host.directory.learn(event.name, event.data)
        if event.name == "INTERACTION_CREATE":
            state = host.book.record(tenant, event.data, event.at)
            if state is not None and state.answer is Answer.NONE and host.rest is not None:
                # Owned by this run: ended (cancelled) when the run commits or rolls back.
                self._defer_task = asyncio.get_running_loop().create_task(
                    self._defer_when_late(state))

    # -- the calls -------------------------------------------------------------------------
    async def call(self, op: str, args: Sequence[JsonValue]) -> JsonValue:
        spec = CALLS.get(op)
        if spec is None:
            raise HostCallError(f"no such call (ctx.discord has {', '.join(sorted(CALLS))})")
        allowed, families = spec
        named = _arguments(args, allowed)
        if self._tenant.kind != "guild" and op not in _USER_CALLS:
            raise HostCallError(f"a {self._tenant.kind} tenant can only respond to and follow "
                                "up on the interactions routed to it")
        method: Callable[[dict[str, JsonValue], tuple[str, ...]], Awaitable[JsonValue]] = \
            getattr(self, f"_{op}")
        return await method(named, families)

    @property
    def _guild(self) -> str:
        return self._tenant.id

    def _take(self, families: tuple[str, ...]) -> None:
        """Charges the call to its buckets, or refuses it at once naming bucket and wait."""
        refused = self._limiter.try_acquire_all(families, key="discord")
        if refused is not None:
            family, wait = refused
            bucket = _BUCKET_NAMES.get(family, family)
            raise LimitExceeded(f"rate.{bucket}", f"rate limited: {bucket}, retry in "
                                f"{max(wait, 0.1):.1f} s", retry_after=wait)

    async def _send(self, call: RestCall) -> JsonValue:
        if self._host.rest is None:
            raise DiscordUnavailable("Discord is not configured here (no DISCORD_TOKEN)")
        return await self._host.rest.request(call)

    async def _own_channel(self, channel_id: str, *, missing_ok: bool = False) -> JsonValue:
        """Refuses a channel outside the tenant's guild; gives the channel when it had to be
        fetched to know (None when known from the directory, or missing and ``missing_ok``)."""
        directory = self._host.directory
        guild = directory.guild_of_channel(channel_id)
        fetched: JsonValue = None
        if guild is None and self._host.stand_in:
            directory.channel(channel_id, self._guild)
            guild = self._guild
        if guild is None:
            # A lookup Discord must answer is charged to the tenant like any action, so
            # naming unknown channels in a loop cannot flood Discord with the bot's token.
            self._take(_ACTIONS)
            try:
                fetched = await self._send(RestCall("GET_CHANNEL", {"channel": channel_id}))
            except DiscordError as error:
                if error.status == 404:
                    if missing_ok:
                        return None
                    raise HostCallError(f"channel {channel_id} was not found") from None
                raise
            directory.learn_channel_json(fetched)
            guild = directory.guild_of_channel(channel_id)
        if guild != self._guild:
            where = "a direct message" if guild == NO_GUILD else "not in this guild"
            raise HostCallError(f"channel {channel_id} is {where}")
        return fetched

    async def _own_role(self, role_id: str) -> None:
        directory = self._host.directory
        guild = directory.guild_of_role(role_id)
        if guild is None and self._host.stand_in:
            return
        if guild is None:
            self._take(_ACTIONS)  # as for a channel lookup
            answer = await self._send(RestCall("GET_GUILD_ROLES", {"guild": self._guild}))
            directory.learn_roles_json(self._guild, answer)
            guild = directory.guild_of_role(role_id)
        if guild != self._guild:
            raise HostCallError(f"role {role_id} is not in this guild")

    # Messages ------------------------------------------------------------------------------
    async def _send_message(self, args: dict[str, JsonValue],
                            families: tuple[str, ...]) -> JsonValue:
        channel = _required(args, "channel_id")
        body = checks.message_body(args)
        reply_to = checks.snowflake(args, "reply_to", required=False)
        if reply_to is not None:
            body["message_reference"] = {"message_id": reply_to, "channel_id": channel,
                                         "guild_id": self._guild, "fail_if_not_exists": False}
        _allowed_mentions(args, body)
        await self._own_channel(channel)
        self._take(families)
        return await self._send(RestCall("POST_CHANNEL_MESSAGES", {"channel": channel}, body))

    async def _edit_message(self, args: dict[str, JsonValue],
                            families: tuple[str, ...]) -> JsonValue:
        channel, message = _required(args, "channel_id"), _required(args, "message_id")
        body = checks.message_body(args)
        _allowed_mentions(args, body)
        await self._own_channel(channel)
        self._take(families)
        return await self._send(RestCall("PATCH_CHANNEL_MESSAGE",
                                         {"channel": channel, "message": message}, body))

    async def _delete_message(self, args: dict[str, JsonValue],
                              families: tuple[str, ...]) -> JsonValue:
        channel, message = _required(args, "channel_id"), _required(args, "message_id")
        reason = checks.reason(args)
        await self._own_channel(channel)
        self._take(families)
        await self._send(RestCall("DELETE_CHANNEL_MESSAGE",
                                  {"channel": channel, "message": message}, reason=reason))
        return True

    async def _add_reaction(self, args: dict[str, JsonValue],
                            families: tuple[str, ...]) -> JsonValue:
        channel, message = _required(args, "channel_id"), _required(args, "message_id")
        emoji = args.get("emoji")
        if not isinstance(emoji, str) or not emoji.strip() or len(emoji) > 100:
            raise HostCallError("emoji must be a unicode emoji or name:id")
        emoji = emoji.strip().removeprefix("<").removesuffix(">").removeprefix("a:")
        await self._own_channel(channel)
        self._take(families)
        await self._send(RestCall("PUT_MY_REACTION", {
            "channel": channel, "message": message,
            "emoji": urllib.parse.quote(emoji, safe=":")}))
        return True

    # Moderation ----------------------------------------------------------------------------
    async def _ban(self, args: dict[str, JsonValue], families: tuple[str, ...]) -> JsonValue:
        user = _required(args, "user_id")
        reason = checks.reason(args)
        seconds = checks.optional_int(args, "delete_message_seconds", 0, _MAX_BAN_DELETE, 0)
        self._take(families)
        await self._send(RestCall("PUT_GUILD_BAN", {"guild": self._guild, "user": user},
                                  {"delete_message_seconds": seconds}, reason=reason))
        return True

    async def _unban(self, args: dict[str, JsonValue], families: tuple[str, ...]) -> JsonValue:
        user = _required(args, "user_id")
        reason = checks.reason(args)
        self._take(families)
        await self._send(RestCall("DELETE_GUILD_BAN", {"guild": self._guild, "user": user},
                                  reason=reason))
        return True

    async def _kick(self, args: dict[str, JsonValue], families: tuple[str, ...]) -> JsonValue:
        user = _required(args, "user_id")
        reason = checks.reason(args)
        self._take(families)
        await self._send(RestCall("DELETE_GUILD_MEMBER", {"guild": self._guild, "user": user},
                                  reason=reason))
        return True

    async def _timeout(self, args: dict[str, JsonValue],
                       families: tuple[str, ...]) -> JsonValue:
        user = _required(args, "user_id")
        seconds = checks.optional_int(args, "seconds", 0, _MAX_TIMEOUT)
        if seconds is None:
            raise HostCallError("seconds is required (0 clears a timeout)")
        reason = checks.reason(args)
        until: JsonValue = None
        if seconds:
            until = datetime.datetime.fromtimestamp(time.time() + seconds,
                                                    datetime.UTC).isoformat()
        self._take(families)
        return await self._send(RestCall(
            "PATCH_GUILD_MEMBER", {"guild": self._guild, "user": user},
            {"communication_disabled_until": until}, reason=reason))

    async def _add_role(self, args: dict[str, JsonValue],
                        families: tuple[str, ...]) -> JsonValue:
        return await self._role("PUT_GUILD_MEMBER_ROLE", args, families)

    async def _remove_role(self, args: dict[str, JsonValue],
                           families: tuple[str, ...]) -> JsonValue:
        return await self._role("DELETE_GUILD_MEMBER_ROLE", args, families)

    async def _role(self, route: str, args: dict[str, JsonValue],
                    families: tuple[str, ...]) -> JsonValue:
        user, role = _required(args, "user_id"), _required(args, "role_id")
        reason = checks.reason(args)
        await self._own_role(role)
        self._take(families)
        await self._send(RestCall(route, {"guild": self._guild, "user": user, "role": role},
                                  reason=reason))
        return True

    # Reading -------------------------------------------------------------------------------
    async def _get_member(self, args: dict[str, JsonValue],
                          families: tuple[str, ...]) -> JsonValue:
        user = _required(args, "user_id")
        self._take(families)
        try:
            return await self._send(RestCall("GET_GUILD_MEMBER",
                                             {"guild": self._guild, "user": user}))
        except DiscordError as error:
            if error.status == 404:
                return None
            raise

    async def _get_channel(self, args: dict[str, JsonValue],
                           families: tuple[str, ...]) -> JsonValue:
        channel = _required(args, "channel_id")
        fetched = await self._own_channel(channel, missing_ok=True)
        self._take(families)
        if fetched is not None or self._host.directory.guild_of_channel(channel) is None:
            return fetched
        try:
            answer = await self._send(RestCall("GET_CHANNEL", {"channel": channel}))
        except DiscordError as error:
            if error.status == 404:
                self._host.directory.forget_channel(channel)
                return None
            raise
        return answer

    async def _get_guild(self, args: dict[str, JsonValue],
                         families: tuple[str, ...]) -> JsonValue:
        self._take(families)
        return await self._send(RestCall("GET_GUILD", {"guild": self._guild}))

    async def _get_roles(self, args: dict[str, JsonValue],
                         families: tuple[str, ...]) -> JsonValue:
        self._take(families)
        answer = await self._send(RestCall("GET_GUILD_ROLES", {"guild": self._guild}))
        self._host.directory.learn_roles_json(self._guild, answer)
        return answer

    # Interactions --------------------------------------------------------------------------
    def _interaction(self, args: dict[str, JsonValue]) -> InteractionState:
        given = args.get("interaction")
        interaction_id = given.get("id") if isinstance(given, dict) else given
        if not isinstance(interaction_id, str) or not interaction_id.isdigit():
            raise HostCallError("interaction is required: the INTERACTION_CREATE event's data")
        state = self._host.book.find(self._tenant, interaction_id)
        if state is None:
            raise HostCallError(f"interaction {interaction_id} was not routed to this tenant, "
                                "or is older than 15 minutes")
        return state

    async def _respond(self, args: dict[str, JsonValue],
                       families: tuple[str, ...]) -> JsonValue:
        state = self._interaction(args)
        body = checks.message_body(args, ephemeral=args.get("ephemeral") is True)
        _allowed_mentions(args, body)
        self._take(families)
        async with state.lock:
            if state.answer is Answer.RESPONDED:
                raise HostCallError("the interaction was answered already; use followup")
            if state.answer is Answer.DEFERRED:
                body.pop("flags", None)  # the deferral fixed whether it is ephemeral
                await self._send(RestCall("PATCH_INTERACTION_RESPONSE", {
                    "webhook": state.application_id, "token": state.token}, body,
                    bot_auth=False))
            else:
                await self._send(RestCall("POST_INTERACTION_RESPONSE", {
                    "interaction": state.id, "token": state.token},
                    {"type": 4, "data": body}, bot_auth=False))
            state.answer = Answer.RESPONDED
        return True

    async def _followup(self, args: dict[str, JsonValue],
                        families: tuple[str, ...]) -> JsonValue:
        state = self._interaction(args)
        body = checks.message_body(args, ephemeral=args.get("ephemeral") is True)
        _allowed_mentions(args, body)
        if state.answer is Answer.NONE:
            raise HostCallError("the interaction has no answer yet: respond (or defer) first")
        self._take(families)
        return await self._send(RestCall("POST_WEBHOOK_WITH_TOKEN", {
            "webhook": state.application_id, "token": state.token}, body,
            query={"wait": "true"}, bot_auth=False))

    async def _defer(self, args: dict[str, JsonValue], families: tuple[str, ...]) -> JsonValue:
        state = self._interaction(args)
        self._take(families)
        return await self._defer_now(state, ephemeral=args.get("ephemeral") is True)

    async def _defer_now(self, state: InteractionState, *, ephemeral: bool) -> bool:
        async with state.lock:
            if state.answer is not Answer.NONE:
                return False
            data: dict[str, JsonValue] = {"flags": 64} if ephemeral else {}
            await self._send(RestCall("POST_INTERACTION_RESPONSE", {
                "interaction": state.id, "token": state.token}, {"type": 5, "data": data},
                bot_auth=False))
            state.answer = Answer.DEFERRED
        return True

    async def _defer_when_late(self, state: InteractionState) -> None:
        await asyncio.sleep(max(0.0, state.arrived_at + self._host.defer_after - time.time()))
        try:
            if await self._defer_now(state, ephemeral=False):
                self._say("info", f"interaction {state.id} deferred: no respond within "
                          f"{self._host.defer_after:g} s")
        except HostCallError as error:
            self._say("warn", f"deferring interaction {state.id} failed: {error}")

    def _say(self, level: str, message: str) -> None:
        if self._log is not None:
            self._log(level, self._template, message)
        else:
            _log.info("%s: %s", self._tenant, message)

    # -- the run's end ---------------------------------------------------------------------
    def _end(self) -> None:
        # The deferral belongs to the run: it is cancelled when the run ends, either way.
        task, self._defer_task = self._defer_task, None
        if task is not None:
            task.cancel()

    def take_effects(self) -> RunEffects:
        """Discord actions are not transactional: nothing waits for the commit."""
        self._end()
        return RunEffects()

    def discard(self) -> None:
        self._end()


def _arguments(args: Sequence[JsonValue], allowed: tuple[str, ...]) -> dict[str, JsonValue]:
    """The one table of named arguments every call takes."""
    given = args[0] if args else None
    if given is None or given == []:
        given = {}
    if not isinstance(given, dict):
        raise HostCallError("takes one table of named arguments, as in "
                            "ctx.discord.send_message{channel_id = ..., content = ...}")
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no arguments"
        raise HostCallError(f"unknown argument {unknown[0]} (it takes {takes})")
    return dict(given)


def _required(args: Mapping[str, JsonValue], name: str) -> str:
    value = checks.snowflake(args, name)
    assert value is not None
    return value


def _allowed_mentions(args: Mapping[str, JsonValue], body: dict[str, JsonValue]) -> None:
    mentions = args.get("allowed_mentions")
    if mentions is None:
        return
    if not isinstance(mentions, dict):
        raise HostCallError("allowed_mentions must be a table")
    body["allowed_mentions"] = mentions
