"""The Engine: wires one configuration into one running system. The only object a caller needs.

```python
async with Engine.open(database_url="sqlite:///bot.db", topology="thread", workers=2) as engine:
    await engine.templates.put(TenantId.guild(123), "welcome", files={"init.lua": source})
    results = await engine.dispatch(TenantId.guild(123), Event("MESSAGE_CREATE", data))
```

An engine owns everything it starts (its store, its worker pool, its background dispatches)
and stops all of it when its ``open`` block ends. There are no module-level singletons: two
engines can live in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from moonshard.discord.config import DiscordConfig
from moonshard.discord.directory import gateway_event_id
from moonshard.errors import ConfigurationError, LimitExceeded, MoonshardError, Overloaded
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.observer import DispatchObserver
from moonshard.routing import route_gateway
from moonshard.store import open_store
from moonshard.store.api import KVRecord, Store, TimerRef
from moonshard.templates import Template, check_template_shape
from moonshard.tenants import TenantId
from moonshard.timers.service import TimerConfig
from moonshard.topology.pool import Topology, WorkerPool
from moonshard.topology.supervisor import Quarantine, RestartPolicy
from moonshard.values import JsonValue
from moonshard.worker.core import DispatchReply, TenantLog, WorkerConfig
from moonshard.worker.messages import Arm, Dispatch, Reload, Status, Validate

__all__ = ["DEFAULT_DATABASE_URL", "Engine", "GatewayOutcome", "TemplatesAPI"]

DEFAULT_DATABASE_URL = "sqlite:///./moonshard-data/moonshard.db"
_tenant_logger = logging.getLogger("moonshard.tenant")
_log = logging.getLogger(__name__)


def _log_to_logging(tenant: TenantId, level: str, template: str, message: str) -> None:
    number = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR}.get(level, logging.INFO)
    _tenant_logger.log(number, "%s %s: %s", tenant, template, message)


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayOutcome:
    """Where a raw gateway dispatch went: a tenant and event id, or why it was dropped."""

    tenant: TenantId | None = None
    event_id: str | None = None
    dropped: str | None = None


class TemplatesAPI:
    """``engine.templates``: a tenant's templates. A save returns once every later event of
    the tenant sees it."""

    def __init__(self, store: Store, pool: WorkerPool, limits: Limits,
                 on_change: Any) -> None:
        self._store = store
        self._pool = pool
        self._limits = limits
        self._on_change = on_change

    async def put(self, tenant: TenantId, name: str, files: Mapping[str, str], *,
                  paused: bool = False) -> Template:
        """Validates, stores and swaps in a template; raises TemplateError or LimitExceeded."""
        check_template_shape(name, files, self._limits)
        current = await self._store.templates.load_set(tenant)
        if current.get(name) is None and len(current.templates) >= \
                self._limits.templates_per_tenant:
            raise LimitExceeded("template.count", f"tenant {tenant} already has "
                                f"{len(current.templates)} templates; the limit is "
                                f"{self._limits.templates_per_tenant}")
        checked = await self._pool.request(tenant, Validate(tenant, name, dict(files)))
        template = Template(name, files, tuple(checked["events"]), paused=paused,
                            updated_at=time.time())
        template_set = await self._store.templates.put(tenant, template)
        await self._pool.request(tenant, Reload(tenant))
        self._on_change(tenant, template_set.subscriptions)
        saved = template_set.get(name)
        assert saved is not None
        return saved

    async def get(self, tenant: TenantId, name: str) -> Template | None:
        return (await self._store.templates.load_set(tenant)).get(name)

    async def list(self, tenant: TenantId) -> list[Template]:
        return list((await self._store.templates.load_set(tenant)).templates)

    async def delete(self, tenant: TenantId, name: str) -> bool:
        template_set = await self._store.templates.delete(tenant, name)
        if template_set is None:
            return False
        await self._pool.request(tenant, Reload(tenant))
        self._on_change(tenant, template_set.subscriptions)
        return True


class Engine:
    """A running moonshard: store, worker pool, and the calls into them."""

    def __init__(self, store: Store, pool: WorkerPool, limits: Limits,
                 max_background: int,
                 observer: DispatchObserver | None = None,
                 discord_user_id: str | None = None) -> None:
        self.store = store
        # The bot's own user id: its own messages and interactions are dropped at the door.
        # Read from the token; the gateway sets it from READY.
        self.discord_user_id = discord_user_id
        # Told about every dispatch (metrics); see moonshard.observer.
        self._observer = observer
        self.pool = pool
        self.limits = limits
        # Owned here and awaited when the engine closes (a TaskGroup would wrap every error
        # of the caller's ``async with`` block in an ExceptionGroup).
        self._background: set[asyncio.Task[None]] = set()
        self._max_background = max_background
        self._in_background = 0
        # Subscriptions per tenant, so gateway events nobody handles are dropped at the door.
        self._subscriptions: OrderedDict[TenantId, frozenset[str]] = OrderedDict()
        self.templates = TemplatesAPI(store, pool, limits, self._remember_subscriptions)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, database_url: str = DEFAULT_DATABASE_URL, *, topology: Topology = "thread",
        workers: int | None = None, limits: Limits | None = None, log: TenantLog | None = None,
        lua_threads: int = 4, idle_seconds: float = 300.0, max_resident_vms: int = 2000,
        mailbox_size: int = 1000, restart_policy: RestartPolicy | None = None,
        quarantine: Quarantine | None = None, max_background: int = 10_000,
        stop_deadline: float = 30.0, observer: DispatchObserver | None = None,
        timers: TimerConfig | None = None, discord: DiscordConfig | None = None,
    ) -> AsyncIterator[Engine]:
        """Starts everything; on leaving the block, drains and stops everything.

        ``discord`` is how ``ctx.discord`` reaches Discord: a token and API URL (each worker
        builds its own REST client), or ``DiscordConfig.of_rest(bot.rest)`` to share a hikari
        REST client this process runs (thread topology only).
        """
        limits = limits or Limits()
        count = workers if workers is not None else (os.cpu_count() or 1)
        discord = _discord_for_workers(discord, topology)
        configs = [
            WorkerConfig(index, database_url, limits, lua_threads=lua_threads,
                         idle_seconds=idle_seconds, max_resident_vms=max_resident_vms,
                         mailbox_size=mailbox_size, kill_when_stuck=topology == "process",
                         workers=count, timers=timers or TimerConfig(), discord=discord)
            for index in range(count)
        ]
        # The engine's store also applies migrations before any worker opens the database.
        async with await open_store(database_url) as store:
            pool = WorkerPool(topology, configs, log or _log_to_logging, restart_policy,
                              quarantine)
            await pool.start()
            try:
                engine = cls(store, pool, limits, max_background, observer,
                             discord.bot_user_id if discord is not None else None)
                try:
                    yield engine
                finally:
                    await engine._drain_background()
            finally:
                await pool.stop(stop_deadline)

    # -- events ----------------------------------------------------------------------------
    async def dispatch(self, tenant: TenantId, event: Event) -> list[HandlerResult]:
        """Runs ``event`` through the tenant's subscribing templates and returns their results.

        Raises ``WorkerCrashed`` if the worker died while running it (it is not re-run),
        ``Overloaded`` when the tenant's queue is full, ``TenantQuarantined``.
        """
        reply = await self._dispatch(tenant, event)
        return reply.results

    async def _dispatch(self, tenant: TenantId, event: Event) -> DispatchReply:
        started = time.monotonic()
        try:
            reply = await self.pool.request(tenant, Dispatch(tenant, event))
        except BaseException as error:
            if self._observer is not None:
                self._observer.dispatch_finished(tenant, event, None, error,
                                                 time.monotonic() - started)
            raise
        assert isinstance(reply, DispatchReply)
        if self._observer is not None:
            self._observer.dispatch_finished(tenant, event, reply, None,
                                             time.monotonic() - started)
        return reply

    @property
    def background_dispatches(self) -> int:
        """Dispatches queued by ``dispatch_nowait`` (and the gateway) not finished yet."""
        return self._in_background

    def dispatch_nowait(self, tenant: TenantId, event: Event) -> str:
        """Queues ``event`` and returns its id; failures go to the tenant's log."""
        if self._in_background >= self._max_background:
            raise Overloaded(f"{self._in_background} dispatches are already in flight")
        self._in_background += 1
        task = asyncio.create_task(self._run_in_background(tenant, event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return event.id

    async def _drain_background(self) -> None:
        """Lets every queued dispatch finish before the workers stop."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _run_in_background(self, tenant: TenantId, event: Event) -> None:
        try:
            await self._dispatch(tenant, event)
        except MoonshardError as error:
            _log.warning("dispatch of %s to %s failed: %s", event.name, tenant, error)
        except Exception:
            _log.exception("dispatch of %s to %s failed", event.name, tenant)
        finally:
            self._in_background -= 1

    async def ingest_gateway(self, payload: Mapping[str, Any]) -> GatewayOutcome:
        """Routes a raw Discord dispatch ``{"t", "d", ...}`` to its tenant and queues it.

        Raises ValueError for a malformed payload.
        """
        route = route_gateway(payload)
        if route.tenant is None:
            return GatewayOutcome(dropped=route.dropped)
        name = str(payload["t"])
        if self.discord_user_id is not None and _from_the_bot(name, payload["d"],
                                                              self.discord_user_id):
            return GatewayOutcome(tenant=route.tenant,
                                  dropped=f"{name} was caused by the bot itself")
        subscriptions = await self._subscriptions_of(route.tenant)
        if name not in subscriptions:
            return GatewayOutcome(tenant=route.tenant,
                                  dropped=f"no template of {route.tenant} subscribes to {name}")
        data: JsonValue = dict(payload["d"])
        event = Event(name, data, author=_author_of(payload["d"]), id=gateway_event_id())
        return GatewayOutcome(tenant=route.tenant,
                              event_id=self.dispatch_nowait(route.tenant, event))

    async def _subscriptions_of(self, tenant: TenantId) -> frozenset[str]:
        known = self._subscriptions.get(tenant)
        if known is None:
            known = (await self.store.templates.load_set(tenant)).subscriptions
            self._remember_subscriptions(tenant, known)
        else:
            self._subscriptions.move_to_end(tenant)
        return known

    def _remember_subscriptions(self, tenant: TenantId, subscriptions: frozenset[str]) -> None:
        self._subscriptions[tenant] = subscriptions
        self._subscriptions.move_to_end(tenant)
        while len(self._subscriptions) > 100_000:
            self._subscriptions.popitem(last=False)

    async def kv_written(self, tenant: TenantId, records: Iterable[KVRecord]) -> None:
        """Tells the tenant's worker about expiries written outside it (by the HTTP API), so
        one due soon fires on time rather than when the worker next reads the store."""
        for record in records:
            if record.expires_at is not None:
                await self.pool.request(tenant, Arm(TimerRef(
                    "expiry", record.expires_at, tenant, record.scope, record.key,
                    record.version)))

    async def tenant_status(self, tenant: TenantId) -> dict[str, Any]:
        """Whether the tenant's VM is resident on its worker, its memory, its queue."""
        reply: dict[str, Any] = await self.pool.request(tenant, Status(tenant))
        return reply

    async def status(self) -> list[dict[str, Any]]:
        return await self.pool.status()


def _discord_for_workers(discord: DiscordConfig | None,
                         topology: Topology) -> DiscordConfig | None:
    """A handed REST client runs on this loop; thread workers reach it through the loop."""
    if discord is None or discord.rest is None:
        return discord
    if topology != "thread":
        raise ConfigurationError("a REST client handed to the engine serves thread workers "
                                 "only; for worker processes give a token and API URL")
    from moonshard.discord.rest import LoopBoundRest  # noqa: PLC0415 - hikari is heavy

    return dataclasses.replace(discord, rest=LoopBoundRest(discord.rest,
                                                           asyncio.get_running_loop()))


def _from_the_bot(name: str, data: object, bot_user_id: str) -> bool:
    """A message or interaction the bot itself caused (its own sends, its reactions)."""
    if not (name.startswith("MESSAGE_") or name == "INTERACTION_CREATE") or \
            not isinstance(data, dict):
        return False
    user_id = data.get("user_id")
    return user_id == bot_user_id or _author_of(data) == bot_user_id


def _author_of(data: object) -> str | None:
    """The user a dispatch is from: the message author, or the interacting user."""
    if not isinstance(data, dict):
        return None
    for path in (("author", "id"), ("member", "user", "id"), ("user", "id")):
        value: object = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value.isdigit():
            return value
    return None
