"""Gateway in: hikari's ``GatewayBot`` connects (sharding, heartbeats, reconnect and resume
are hikari's) and each raw dispatch payload goes to ``Engine.ingest_gateway``, the same routing
as ``POST /v1/gateway``. No model objects: hikari's cache is off, and the listener takes the
raw ``ShardPayloadEvent`` payload.

Dispatches enter a bounded queue in the order the shards received them and are routed one at
a time, so one tenant's events keep their order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import hikari
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moonshard.errors import MoonshardError

if TYPE_CHECKING:
    from moonshard.tenants import TenantId


class RoutedDispatch(Protocol):
    """What routing made of one dispatch (``Engine.ingest_gateway``'s answer)."""

    @property
    def tenant(self) -> TenantId | None: ...

    @property
    def dropped(self) -> str | None: ...


class GatewayTarget(Protocol):
    """Where the gateway hands its dispatches: the engine (kept as a protocol, so that this
    package sits below the engine in the layers)."""

    discord_user_id: str | None

    async def ingest_gateway(self, payload: Mapping[str, Any]) -> RoutedDispatch: ...

__all__ = ["DiscordGateway", "GatewayCollector"]

_log = logging.getLogger(__name__)
# Dispatches the gateway does not route (the connection's own bookkeeping).
_OWN_EVENTS = frozenset({"READY", "RESUMED"})
_RETRY_CAP = 60.0


class DiscordGateway:
    """The gateway connection of ``moonshard serve``: run it with ``run()``, end it with
    ``stop()``."""

    def __init__(self, engine: GatewayTarget, token: str, api_url: str, intents: int, *,
                 queue_size: int = 10_000) -> None:
        self._engine = engine
        self._token = token
        self._api_url = api_url.rstrip("/")
        self._intents = intents
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(queue_size)
        self._bot: hikari.GatewayBot | None = None
        self._stopping = asyncio.Event()
        self.state = "starting"
        self.error: str | None = None
        self.received = 0
        self.routed = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.started_at: float | None = None

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Connects (retrying with backoff while Discord cannot be reached) and routes
        dispatches until ``stop``. A refused token ends it with ``state == "failed"``."""
        async with asyncio.TaskGroup() as tasks:
            router = tasks.create_task(self._route_forever())
            try:
                await self._connect_and_wait()
            finally:
                router.cancel()

    async def _connect_and_wait(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                bot = self._new_bot()
            except ValueError as error:  # hikari reads the bot's id from the token
                self._fail(f"the token is not a Discord bot token ({error})")
                return
            try:
                started = await self._unless_stopping(bot.start(check_for_updates=False))
            except hikari.UnauthorizedError:
                self._fail("Discord refused the token (401 Unauthorized)")
                await _close_quietly(bot)
                return
            except (hikari.HTTPError, hikari.GatewayError, OSError, RuntimeError) as error:
                await _close_quietly(bot)
                self.state, self.error = "reconnecting", f"{type(error).__name__}: {error}"
                _log.warning("the Discord gateway could not start (%s); retrying in %.0f s",
                             self.error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, _RETRY_CAP)
                continue
            if not started:
                await _close_quietly(bot)
                return
            self._bot, self.state, self.error = bot, "connected", None
            self.started_at = time.time()
            _log.info("connected to the Discord gateway with %d shard(s)", bot.shard_count)
            await self._unless_stopping(bot.join())
            await _close_quietly(bot)
            self._bot = None
            if self._stopping.is_set():
                return
            self.state = "reconnecting"  # every shard ended: start afresh
            delay = 1.0

    async def _unless_stopping(self, work: Coroutine[Any, Any, None]) -> bool:
        """Runs ``work`` until it ends (True) or ``stop`` is asked for (False: cancelled)."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.cancelled():
            return False
        task.result()  # raises what the work raised
        return True

    def _fail(self, message: str) -> None:
        self.state, self.error = "failed", message
        _log.error("the Discord gateway is not connected: %s", message)

    def _new_bot(self) -> hikari.GatewayBot:
        bot = hikari.GatewayBot(
            self._token, rest_url=self._api_url, intents=hikari.Intents(self._intents),
            banner=None, logs=None, suppress_optimization_warning=True,
            auto_chunk_members=False,
            cache_settings=hikari.impl.CacheSettings(components=hikari.api.CacheComponents.NONE))
        bot.subscribe(hikari.ShardPayloadEvent, self._on_payload)
        return bot

    async def stop(self) -> None:
        """Disconnects every shard; dispatches already queued are routed first."""
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), 5.0)

    # -- dispatches ------------------------------------------------------------------------
    async def _on_payload(self, event: hikari.ShardPayloadEvent) -> None:
        # Runs with no await before the put, so dispatches enter the queue in arrival order.
        name, data = event.name, event.payload
        if name in _OWN_EVENTS:
            if name == "READY":
                user = data.get("user")
                if isinstance(user, dict) and isinstance(user.get("id"), str):
                    self._engine.discord_user_id = user["id"]
            return
        self.received += 1
        try:
            self._queue.put_nowait((name, dict(data)))
        except asyncio.QueueFull:
            self.dropped["overloaded"] += 1

    async def _route_forever(self) -> None:
        while True:
            name, data = await self._queue.get()
            try:
                await self._route(name, data)
            finally:
                self._queue.task_done()

    async def _route(self, name: str, data: dict[str, Any]) -> None:
        try:
            outcome = await self._engine.ingest_gateway({"op": 0, "t": name, "d": data})
        except ValueError:
            self.dropped["malformed"] += 1
            return
        except MoonshardError as error:  # the engine is overloaded or stopping
            self.dropped["overloaded"] += 1
            _log.warning("gateway %s not routed: %s", name, error)
            return
        if outcome.dropped is None:
            self.routed += 1
        elif outcome.tenant is None:
            self.dropped["no_tenant"] += 1
        elif "bot itself" in outcome.dropped:
            self.dropped["bot_itself"] += 1
        else:
            self.dropped["no_subscriber"] += 1

    # -- reading ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        bot = self._bot
        shards = []
        if bot is not None:
            for shard in bot.shards.values():
                latency = shard.heartbeat_latency
                shards.append({"id": shard.id, "connected": shard.is_connected,
                               "latency_seconds": None if math.isnan(latency) else latency})
        return {
            "state": self.state,
            "error": self.error,
            "shard_count": bot.shard_count if bot is not None else 0,
            "shards": shards,
            "connected": bool(shards) and all(shard["connected"] for shard in shards),
            "bot_user_id": self._engine.discord_user_id,
            "events": {"received": self.received, "routed": self.routed,
                       "dropped": dict(self.dropped), "queued": self._queue.qsize()},
        }


class GatewayCollector(Collector):
    """The gateway's figures for ``/metrics``."""

    def __init__(self, gateway: DiscordGateway) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        status = self._gateway.status()
        connected = GaugeMetricFamily("moonshard_gateway_shard_connected",
                                      "1 while the gateway shard is connected", labels=["shard"])
        latency = GaugeMetricFamily("moonshard_gateway_latency_seconds",
                                    "Heartbeat latency of the gateway shard", labels=["shard"])
        for shard in status["shards"]:
            connected.add_metric([str(shard["id"])], 1.0 if shard["connected"] else 0.0)
            if shard["latency_seconds"] is not None:
                latency.add_metric([str(shard["id"])], shard["latency_seconds"])
        yield GaugeMetricFamily("moonshard_gateway_shards", "Gateway shards this process runs",
                                value=status["shard_count"])
        yield GaugeMetricFamily("moonshard_gateway_connected",
                                "1 while every gateway shard is connected",
                                value=1.0 if status["connected"] else 0.0)
        yield connected
        yield latency
        events = status["events"]
        yield CounterMetricFamily("moonshard_gateway_events_received",
                                  "Gateway dispatches received", value=events["received"])
        yield CounterMetricFamily("moonshard_gateway_events_routed",
                                  "Gateway dispatches routed to a tenant",
                                  value=events["routed"])
        dropped = CounterMetricFamily("moonshard_gateway_events_dropped",
                                      "Gateway dispatches dropped, by reason", labels=["reason"])
        for reason, count in sorted(events["dropped"].items()):
            dropped.add_metric([reason], count)
        yield dropped


async def _close_quietly(bot: hikari.GatewayBot) -> None:
    with contextlib.suppress(Exception):
        await bot.close()
