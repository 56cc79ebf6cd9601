"""A fake Discord on 127.0.0.1, run on a thread of its own so sync and async tests can use it.

REST: the routes ``ctx.discord`` uses, checked against the bot token, answered from a small
world of guilds, channels, roles and members that a test builds, each answer with Discord's
rate-limit headers; every request is recorded (route, body, headers). ``GET /gateway/bot``
points at the gateway websocket, which speaks Discord's protocol: HELLO, IDENTIFY -> READY,
heartbeats and ACKs, DISPATCH with sequence numbers, RESUME (replaying what was missed) or
INVALID_SESSION, and zlib-stream transport compression when the client asks for it. Test hooks
push dispatches and drop connections. Like Discord, a message the bot sends comes back to it
as a ``MESSAGE_CREATE`` on the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["FakeDiscord", "Recorded", "bot_token"]

_HELLO, _HEARTBEAT, _IDENTIFY, _RESUME, _ACK, _DISPATCH, _INVALID = 10, 1, 2, 6, 11, 0, 9


def bot_token(bot_id: int) -> str:
    """A token in Discord's format: base64 of the bot's id, then two opaque parts."""
    head = base64.b64encode(str(bot_id).encode()).decode().rstrip("=")
    return f"{head}.GfAkE.{'x' * 27}"


@dataclasses.dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # below /api/v10
    query: dict[str, str]
    body: Any
    headers: dict[str, str]

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def reason(self) -> str | None:
        import urllib.parse

        value = self.headers.get("X-Audit-Log-Reason")
        return urllib.parse.unquote(value) if value is not None else None


class _Session:
    def __init__(self, session_id: str, shard: list[int]) -> None:
        self.id = session_id
        self.shard = shard
        self.seq = 0
        self.log: list[dict[str, Any]] = []
        self.socket: _Socket | None = None


class _Socket:
    def __init__(self, ws: web.WebSocketResponse, compress: bool) -> None:
        self.ws = ws
        self._deflate = zlib.compressobj() if compress else None

    async def send(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload)
        if self._deflate is None:
            await self.ws.send_str(text)
        else:
            data = self._deflate.compress(text.encode()) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            await self.ws.send_bytes(data)


class FakeDiscord:
    """Start with ``with FakeDiscord(...) as fake:``; point ``DISCORD_API_URL`` at
    ``fake.api_url``."""

    def __init__(self, bot_id: int = 4242, *, shards: int = 1, heartbeat_ms: int = 2000,
                 application_id: str = "777") -> None:
        self.bot_id = str(bot_id)
        self.token = bot_token(bot_id)
        self.application_id = application_id
        self.shards = shards
        self.heartbeat_ms = heartbeat_ms
        self.guilds: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.identifies = 0
        self.resumes = 0
        self.heartbeats = 0
        self.compressed_connections = 0
        self._sessions: dict[int, _Session] = {}
        self._pending: dict[int, list[dict[str, Any]]] = {}
        self._ids = itertools.count(int(time.time() * 1000) << 22)
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.port = 0

    # -- the world -------------------------------------------------------------------------
    def add_guild(self, guild_id: str, *, channels: tuple[str, ...] = (),
                  roles: tuple[str, ...] = (), members: tuple[str, ...] = ()) -> None:
        guild = {"id": guild_id, "name": f"guild {guild_id}", "owner_id": "1",
                 "roles": [{"id": guild_id, "name": "@everyone", "position": 0}] +
                 [{"id": role, "name": f"role {role}", "position": 1} for role in roles],
                 "members": {member: {"user": {"id": member, "username": f"u{member}"},
                                      "roles": [], "joined_at": "2024-01-01T00:00:00+00:00"}
                             for member in members}}
        self.guilds[guild_id] = guild
        for channel in channels:
            self.channels[channel] = {"id": channel, "type": 0, "guild_id": guild_id,
                                      "name": f"channel-{channel}"}

    def add_dm_channel(self, channel_id: str) -> None:
        self.channels[channel_id] = {"id": channel_id, "type": 1}

    def new_id(self) -> str:
        return str(next(self._ids))

    # -- running ---------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def __enter__(self) -> FakeDiscord:
        self._thread = threading.Thread(target=self._main, daemon=True, name="fake-discord")
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._started.set()
        loop.run_forever()
        loop.close()

    def _call(self, work: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    # -- test hooks ------------------------------------------------------------------------
    def push(self, name: str, data: dict[str, Any]) -> None:
        """Dispatches an event on the shard of its guild (queued until that shard is up)."""
        self._call(self._dispatch(name, data))

    def drop(self, *, code: int | None = 4000) -> int:
        """Ends every gateway connection: with a close frame of ``code`` (4000 lets the client
        resume), or with none at all (``code=None``: the TCP connection just ends)."""
        return int(self._call(self._drop(code)))

    def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float = 20.0,
                 ) -> Recorded:
        """The first recorded request matching ``predicate``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for request in self.requests:
                    if predicate(request):
                        return request
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(r.route for r in self.requests) or "(none)"
                    raise AssertionError(f"no such request within {timeout} s; seen:\n{seen}")
                self._changed.wait(left)

    def wait_until(self, check: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not check():
                left = deadline - time.monotonic()
                assert left > 0, "the fake Discord never got there"
                self._changed.wait(min(left, 0.2))

    def connected(self) -> int:
        return sum(1 for s in self._sessions.values() if s.socket is not None)

    def made(self, method: str, path: str) -> list[Recorded]:
        with self._changed:
            return [r for r in self.requests if r.method == method and r.path == path]

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- the gateway -----------------------------------------------------------------------
    def _shard_of(self, data: dict[str, Any]) -> int:
        guild = data.get("guild_id")
        return (int(guild) >> 22) % self.shards if isinstance(guild, str) else 0

    async def _dispatch(self, name: str, data: dict[str, Any]) -> None:
        shard = self._shard_of(data)
        session = self._sessions.get(shard)
        if session is None:
            self._pending.setdefault(shard, []).append({"t": name, "d": data})
            return
        await self._send_dispatch(session, name, data)

    async def _send_dispatch(self, session: _Session, name: str, data: dict[str, Any]) -> None:
        session.seq += 1
        payload = {"op": _DISPATCH, "t": name, "s": session.seq, "d": data}
        session.log.append(payload)
        if session.socket is not None:
            try:
                await session.socket.send(payload)
            except (ConnectionError, RuntimeError):
                session.socket = None  # replayed on resume

    async def _drop(self, code: int | None) -> int:
        dropped = 0
        for session in self._sessions.values():
            socket, session.socket = session.socket, None
            if socket is None:
                continue
            dropped += 1
            if code is None:
                transport = socket.ws._req.transport if socket.ws._req else None
                if transport is not None:
                    transport.abort()
            else:
                await socket.ws.close(code=code, message=b"fake discord drops you")
        self._notify()
        return dropped

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        compress = request.query.get("compress") == "zlib-stream"
        self.compressed_connections += compress
        socket = _Socket(ws, compress)
        await socket.send({"op": _HELLO, "d": {"heartbeat_interval": self.heartbeat_ms}})
        session: _Session | None = None
        async for message in ws:
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            payload = json.loads(message.data)
            op = payload.get("op")
            if op == _HEARTBEAT:
                self.heartbeats += 1
                await socket.send({"op": _ACK})
            elif op == _IDENTIFY:
                session = await self._identify(socket, payload["d"])
                if session is None:
                    await ws.close(code=4004, message=b"Authentication failed")
                    break
            elif op == _RESUME:
                session = await self._resume(socket, payload["d"])
        if session is not None and session.socket is socket:
            session.socket = None
        self._notify()
        return ws

    async def _identify(self, socket: _Socket, data: dict[str, Any]) -> _Session | None:
        if data.get("token") != self.token:
            return None
        shard = list(data.get("shard") or [0, 1])
        session = _Session(self.new_id(), shard)
        old = self._sessions.get(shard[0])
        if old is not None and old.socket is not None:
            await old.socket.ws.close(code=4000)
        self._sessions[shard[0]] = session
        session.socket = socket
        self.identifies += 1
        await self._send_dispatch(session, "READY", {
            "v": 10, "user": {"id": self.bot_id, "username": "fakebot", "discriminator": "0",
                              "bot": True, "global_name": None, "avatar": None},
            "guilds": [{"id": gid, "unavailable": True} for gid in self.guilds
                       if (int(gid) >> 22) % self.shards == shard[0]],
            "session_id": session.id, "resume_gateway_url": self.gateway_url,
            "shard": shard, "application": {"id": self.application_id, "flags": 0}})
        for pending in self._pending.pop(shard[0], []):
            await self._send_dispatch(session, pending["t"], pending["d"])
        self._notify()
        return session

    async def _resume(self, socket: _Socket, data: dict[str, Any]) -> _Session | None:
        session = next((s for s in self._sessions.values() if s.id == data.get("session_id")),
                       None)
        if session is None or data.get("token") != self.token:
            await socket.send({"op": _INVALID, "d": False})
            return None
        session.socket = socket
        self.resumes += 1
        seq = int(data.get("seq") or 0)
        for payload in session.log:
            if payload["s"] > seq:
                await socket.send(payload)
        session.seq += 1
        resumed = {"op": _DISPATCH, "t": "RESUMED", "s": session.seq, "d": {}}
        session.log.append(resumed)
        await socket.send(resumed)
        self._notify()
        return session

    # -- REST ------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body else None
        recorded = Recorded(request.method, path, dict(request.query), body,
                            dict(request.headers))
        with self._changed:
            self.requests.append(recorded)
            self._changed.notify_all()
        parts = path.strip("/").split("/")
        needs_bot = parts[0] not in ("interactions", "webhooks")
        if needs_bot and request.headers.get("Authorization") != f"Bot {self.token}":
            return _error(401, 0, "401: Unauthorized")
        try:
            status, answer = await self._answer(request.method, parts, body or {})
        except LookupError as error:
            code, message = error.args
            return _error(404, code, message)
        headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
                   "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
                   "X-RateLimit-Reset-After": "1.000", "X-RateLimit-Bucket": f"fake-{parts[0]}"}
        if parts[0] == "interactions":
            headers = {}  # Discord does not rate-limit interaction callbacks
        if status == 204:
            return web.Response(status=204, headers=headers)
        return web.json_response(answer, status=status, headers=headers)

    def _channel(self, channel_id: str) -> dict[str, Any]:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise LookupError(10003, "Unknown Channel")
        return channel

    def _guild(self, guild_id: str) -> dict[str, Any]:
        guild = self.guilds.get(guild_id)
        if guild is None:
            raise LookupError(10004, "Unknown Guild")
        return guild

    def _message(self, channel: dict[str, Any], body: dict[str, Any],
                 message_id: str | None = None) -> dict[str, Any]:
        message = {"id": message_id or self.new_id(), "channel_id": channel["id"],
                   "content": body.get("content", ""), "embeds": body.get("embeds", []),
                   "components": body.get("components", []),
                   "author": {"id": self.bot_id, "username": "fakebot", "bot": True},
                   "timestamp": "2024-01-01T00:00:00+00:00", "type": 0}
        if "guild_id" in channel:
            message["guild_id"] = channel["guild_id"]
        return message

    async def _answer(self, method: str, parts: list[str], body: dict[str, Any],
                      ) -> tuple[int, Any]:
        match method, parts:
            case "GET", ["gateway", "bot"]:
                return 200, {"url": self.gateway_url, "shards": self.shards,
                             "session_start_limit": {"total": 1000, "remaining": 999,
                                                     "reset_after": 86_400_000,
                                                     "max_concurrency": 16}}
            case "POST", ["channels", channel_id, "messages"]:
                message = self._message(self._channel(channel_id), body)
                # Discord tells the bot about its own message, too.
                await self._dispatch("MESSAGE_CREATE", message)
                return 200, message
            case "PATCH", ["channels", channel_id, "messages", message_id]:
                return 200, self._message(self._channel(channel_id), body, message_id)
            case "DELETE", ["channels", channel_id, "messages", _]:
                self._channel(channel_id)
                return 204, None
            case "PUT", ["channels", channel_id, "messages", _, "reactions", _, "@me"]:
                self._channel(channel_id)
                return 204, None
            case "GET", ["channels", channel_id]:
                return 200, self._channel(channel_id)
            case "GET", ["guilds", guild_id]:
                guild = self._guild(guild_id)
                return 200, {key: value for key, value in guild.items() if key != "members"}
            case "GET", ["guilds", guild_id, "roles"]:
                return 200, self._guild(guild_id)["roles"]
            case ("PUT" | "DELETE"), ["guilds", guild_id, "bans", _]:
                self._guild(guild_id)
                return 204, None
            case "GET", ["guilds", guild_id, "members", user_id]:
                member = self._guild(guild_id)["members"].get(user_id)
                if member is None:
                    raise LookupError(10007, "Unknown Member")
                return 200, member
            case "PATCH", ["guilds", guild_id, "members", user_id]:
                member = self._guild(guild_id)["members"].get(user_id)
                if member is None:
                    raise LookupError(10007, "Unknown Member")
                member.update(body)
                return 200, member
            case "DELETE", ["guilds", guild_id, "members", user_id]:
                if self._guild(guild_id)["members"].pop(user_id, None) is None:
                    raise LookupError(10007, "Unknown Member")
                return 204, None
            case ("PUT" | "DELETE"), ["guilds", guild_id, "members", _, "roles", role_id]:
                guild = self._guild(guild_id)
                if not any(role["id"] == role_id for role in guild["roles"]):
                    raise LookupError(10011, "Unknown Role")
                return 204, None
            case "POST", ["interactions", _, _, "callback"]:
                return 204, None
            case "PATCH", ["webhooks", _, _, "messages", "@original"]:
                return 200, self._message({"id": "0"}, body)
            case "POST", ["webhooks", _, _]:
                return 200, self._message({"id": "0"}, body)
        raise LookupError(0, f"404: Not Found ({method} /{'/'.join(parts)})")


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"message": message, "code": code}, status=status)
