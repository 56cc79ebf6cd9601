"""``DiscordRest`` over hikari's REST client: Discord's rate limits and retries are hikari's.

hikari's typed methods answer with model objects; templates get Discord's JSON, so calls go
through the client's raw request path with hikari's own route table (the same path its typed
methods use, so buckets, retries and the ``X-Audit-Log-Reason`` header are hikari's).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

import hikari
from hikari.impl import rest as rest_impl
from hikari.internal import data_binding, routes

from moonshard.discord.api import DiscordError, DiscordRest, DiscordUnavailable, RestCall
from moonshard.values import JsonValue

__all__ = ["HikariRest", "LoopBoundRest", "TokenRest"]

_T = TypeVar("_T")
_MAX_RATE_LIMIT_WAIT = 30.0


def _builder(body: JsonValue) -> data_binding.JSONObjectBuilder | data_binding.JSONArray | None:
    if body is None:
        return None
    if isinstance(body, list):
        return body
    assert isinstance(body, dict), "a REST body is a JSON object or array"
    builder = data_binding.JSONObjectBuilder()
    builder.update(body)
    return builder


class HikariRest(DiscordRest):
    """Sends through a running ``hikari.impl.RESTClientImpl`` (``bot.rest`` of a hikari bot,
    or one ``TokenRest`` made). Must be used on the event loop that client runs on."""

    __slots__ = ("_client",)

    def __init__(self, client: hikari.api.RESTClient) -> None:
        if not isinstance(client, rest_impl.RESTClientImpl):
            raise TypeError("expected hikari's RESTClientImpl (for example bot.rest)")
        self._client = client

    async def request(self, call: RestCall) -> JsonValue:
        route = getattr(routes, call.route, None)
        if not isinstance(route, routes.Route):
            raise ValueError(f"hikari has no route {call.route}")
        compiled = route.compile(**call.params)
        query = None
        if call.query:
            query = data_binding.StringMapBuilder()
            for key, value in call.query.items():
                query.put(key, value)
        try:
            # The raw request path of hikari's client: JSON in, JSON out (see the module doc).
            answer = await self._client._request(
                compiled, json=_builder(call.body), query=query,
                reason=call.reason if call.reason is not None else hikari.UNDEFINED,
                auth=hikari.UNDEFINED if call.bot_auth else None)
        except hikari.HTTPResponseError as error:
            raise DiscordError(int(error.status), int(error.code),
                               error.message or str(error.status)) from None
        except hikari.RateLimitTooLongError as error:
            raise DiscordUnavailable(f"Discord rate-limits this route for "
                                     f"{error.retry_after:.0f} s") from None
        except hikari.HTTPError as error:
            raise DiscordUnavailable(f"Discord could not be reached: {error.message}") from None
        except hikari.HikariError as error:  # for example a client already closed
            raise DiscordUnavailable(f"the Discord client cannot send: {error}") from None
        return answer  # type: ignore[return-value]


class TokenRest(DiscordRest):
    """A REST client of its own, from a bot token and an API base URL; opened on first use,
    on the loop that uses it."""

    __slots__ = ("_api_url", "_app", "_client", "_lock", "_raw", "_token")

    def __init__(self, token: str, api_url: str) -> None:
        self._token = token
        self._api_url = api_url.rstrip("/")
        self._app: rest_impl.RESTApp | None = None
        self._client: HikariRest | None = None
        self._raw: rest_impl.RESTClientImpl | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> HikariRest:
        async with self._lock:
            if self._client is None:
                # A Discord rate limit longer than this fails the call rather than holding the
                # tenant's mailbox (hikari's default would wait up to five minutes).
                app = rest_impl.RESTApp(url=self._api_url, max_rate_limit=_MAX_RATE_LIMIT_WAIT)
                await app.start()
                client = app.acquire(self._token, hikari.TokenType.BOT)
                client.start()
                self._app, self._raw = app, client
                self._client = HikariRest(client)
            return self._client

    async def request(self, call: RestCall) -> JsonValue:
        client = self._client or await self._open()
        return await client.request(call)

    async def close(self) -> None:
        if self._app is not None:
            if self._raw is not None:
                await self._raw.close()
            await self._app.close()
            self._app, self._client, self._raw = None, None, None


class LoopBoundRest(DiscordRest):
    """Runs another transport's calls on the loop that owns it (a REST client handed to the
    engine serves thread workers, each of which runs its own loop)."""

    __slots__ = ("_inner", "_loop")

    def __init__(self, inner: DiscordRest, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._loop = loop

    async def request(self, call: RestCall) -> JsonValue:
        return await self._on_owner(self._inner.request(call))

    async def _on_owner(self, work: Coroutine[Any, Any, _T]) -> _T:
        if asyncio.get_running_loop() is self._loop:
            return await work
        try:
            future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(
                work, self._loop)
        except RuntimeError:  # the loop that runs the client has closed
            work.close()
            raise DiscordUnavailable("the REST client handed to the engine is not running "
                                     "any more") from None
        return await asyncio.wrap_future(future)
