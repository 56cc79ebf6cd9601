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
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import msgspec

from moonshard.contracts.timers import TimerRef
from moonshard.contracts.worker import (
    Arm,
    Dispatch,
    DispatchReply,
    Reload,
    Status,
    TenantLog,
    TenantStatus,
    TimerConfig,
    Validate,
    ValidateReply,
    WorkerConfig,
    reply_as,
)
from moonshard.discord.config import DiscordConfig
from moonshard.discord.directory import gateway_event_id
from moonshard.errors import (
    ConfigurationError,
    EventStopped,
    MoonshardError,
    NothingToRollBack,
    Overloaded,
    TemplateNotFound,
    WorkerCrashed,
    WorkerUnavailable,
)
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.observer import DispatchObserver
from moonshard.routing import route_gateway
from moonshard.store import open_store
from moonshard.store.api import KVRecord, Store, TemplateVersion
from moonshard.templates import Template, check_template_shape
from moonshard.tenants import TenantId
from moonshard.topology.pool import Topology, WorkerPool
from moonshard.topology.process import Liveness
from moonshard.topology.ray.options import RayOptions
from moonshard.topology.supervisor import Quarantine, RestartPolicy
from moonshard.values import JsonValue

__all__ = ["DEFAULT_DATABASE_URL", "Engine", "GatewayOutcome", "TemplatesAPI"]

DEFAULT_DATABASE_URL = "sqlite:///./moonshard-data/moonshard.db"
# How long past its stop deadline a worker may take to end before its process is killed.
_STOP_GRACE_SECONDS = 5.0
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
        checked = reply_as(await self._pool.request(tenant, Validate(tenant, name, dict(files))),
                           ValidateReply)
        template = Template(name, files, checked.events, paused=paused,
                            updated_at=time.time())
        # The store checks the template count in the transaction that adds it.
        template_set = await self._store.templates.put(
            tenant, template, max_templates=self._limits.templates_per_tenant)
        await self._pool.request(tenant, Reload(tenant))
        self._on_change(tenant, template_set.subscriptions)
        saved = template_set.get(name)
        assert saved is not None
        return saved

    async def history(self, tenant: TenantId, name: str) -> list[TemplateVersion]:
        """The template's kept versions, newest (the current one) first; raises
        TemplateNotFound when the tenant has no such template."""
        versions = await self._store.templates.history(tenant, name)
        if not versions:
            raise TemplateNotFound(f"{tenant} has no template {name!r}")
        return versions

    async def rollback(self, tenant: TenantId, name: str,
                       version: int | None = None) -> Template:
        """Saves the files of an earlier kept version (default: the one before the current)
        as a new version, through ``put``: validated, stored and swapped in like a push.

        Keeps the template's paused state. Raises TemplateNotFound (no such template, or that
        version is not kept) or NothingToRollBack.
        """
        current = await self.get(tenant, name)
        versions = await self.history(tenant, name)
        if current is None:
            raise TemplateNotFound(f"{tenant} has no template {name!r}")
        if version is None:
            earlier = [kept.version for kept in versions if kept.version < current.version]
            if not earlier:
                raise NothingToRollBack(
                    f"template {name!r} of {tenant} has no earlier version to roll back to")
            version = earlier[0]
        elif version == current.version:
            raise NothingToRollBack(
                f"version {version} is already the current version of template {name!r}")
        target = await self._store.templates.version(tenant, name, version)
        if target is None:
            kept = ", ".join(str(item.version) for item in versions)
            raise TemplateNotFound(
                f"template {name!r} of {tenant} has no version {version} kept (kept: {kept})")
        return await self.put(tenant, name, target.files, paused=current.paused)

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
        self._workers_stop: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        """True once ``stop_workers`` has been called: requests now fail fast."""
        return self._workers_stop is not None

    async def stop_workers(self, deadline: float) -> None:
        """Stops the worker pool, giving queued and running events ``deadline`` seconds.

        The first call decides the deadline; later calls wait for the same stop. It is
        shielded: a caller that is cancelled does not cut the stop short. ``open`` calls it
        on leaving its block.
        """
        if self._workers_stop is None:
            self._workers_stop = asyncio.create_task(self._stop_pool(deadline))
        await asyncio.shield(self._workers_stop)

    async def _stop_pool(self, deadline: float) -> None:
        stopping = asyncio.ensure_future(self.pool.stop(deadline))
        done, _ = await asyncio.wait({stopping}, timeout=deadline + _STOP_GRACE_SECONDS)
        if not done:
            # A worker process that answered its stop but does not end (it can wait for
            # events that will never run) must not hold the whole service up.
            _log.warning("workers did not end %.0f s after their stop deadline: killing "
                         "their processes", _STOP_GRACE_SECONDS)
            self.kill_worker_processes()
        await stopping

    def kill_worker_processes(self) -> None:
        """Ends every worker process at once (SIGKILL); thread workers are left alone."""
        for worker in self.pool.workers:
            handle = worker.current
            pid = handle.pid if handle is not None else None
            if pid is not None and pid != os.getpid():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, database_url: str = DEFAULT_DATABASE_URL, *, topology: Topology = "thread",
        workers: int | None = None, limits: Limits | None = None, log: TenantLog | None = None,
        lua_threads: int = 4, idle_seconds: float = 300.0, max_resident_vms: int = 2000,
        mailbox_size: int = 1000, restart_policy: RestartPolicy | None = None,
        quarantine: Quarantine | None = None, max_background: int = 10_000,
        stop_deadline: float = 30.0, observer: DispatchObserver | None = None,
        timers: TimerConfig | None = None, liveness: Liveness | None = None,
        discord: DiscordConfig | None = None, ray: RayOptions | None = None,
    ) -> AsyncIterator[Engine]:
        """Starts everything; on leaving the block, drains and stops everything.

        ``discord`` is how ``ctx.discord`` reaches Discord: a token and API URL (each worker
        builds its own REST client), or ``DiscordConfig.of_rest(bot.rest)`` to share a hikari
        REST client this process runs (thread topology only).

        ``topology="ray"`` runs each worker slot as a named Ray actor (``ray``: where the
        cluster is; without an address a local Ray is started); it needs PostgreSQL, which
        every node reaches.
        """
        if topology == "ray" and database_url.partition(":")[0].lower() == "sqlite":
            raise ConfigurationError("the ray topology needs PostgreSQL: its workers run on "
                                     "other machines, which cannot share an SQLite file")
        limits = limits or Limits()
        quarantine = quarantine or Quarantine()
        count = workers if workers is not None else (os.cpu_count() or 1)
        discord = _discord_for_workers(discord, topology)
        configs = [
            WorkerConfig(index, database_url, limits, lua_threads=lua_threads,
                         idle_seconds=idle_seconds, max_resident_vms=max_resident_vms,
                         mailbox_size=mailbox_size, workers=count,
                         quarantine_seconds=quarantine.cool_down_seconds,
                         timers=timers or TimerConfig(), discord=discord)
            for index in range(count)
        ]
        # The engine's store also applies migrations before any worker opens the database.
        async with await open_store(database_url) as store:
            pool = WorkerPool(topology, configs, log or _log_to_logging, restart_policy,
                              quarantine, liveness, ray)
            await pool.start()
            try:
                engine = cls(store, pool, limits, max_background, observer,
                             discord.bot_user_id if discord is not None else None)
            except BaseException:
                await pool.stop(stop_deadline)
                raise
            try:
                yield engine
            finally:
                try:
                    await engine._drain_background()
                finally:
                    await engine.stop_workers(stop_deadline)

    # -- events ----------------------------------------------------------------------------
    async def dispatch(self, tenant: TenantId, event: Event) -> list[HandlerResult]:
        """Runs ``event`` through the tenant's subscribing templates and returns their results.

        Raises ``WorkerCrashed`` if the worker died while running it (it is not re-run),
        ``Overloaded`` when the tenant's queue is full, ``TenantQuarantined``.
        """
        try:
            reply = await self._dispatch(tenant, event)
        except (WorkerCrashed, WorkerUnavailable, asyncio.CancelledError) as error:
            stopped = self._stopped_before_answer(event, error)
            if stopped is None:
                raise
            raise stopped from None
        return reply.results

    def _stopped_before_answer(self, event: Event, error: BaseException) -> EventStopped | None:
        """What became of an event that the workers' stop ended before it answered; None
        when the error is not that."""
        if self._workers_stop is None:
            return None
        if isinstance(error, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                return None  # our caller is being cancelled: not the workers' doing
            # A thread worker's loop cancels what is still queued when it ends.
            started = False
        else:
            # The supervisor and the worker refuse a request they did not begin with "...
            # is stopping"; a crash or "the worker stopped" happened while it ran.
            started = isinstance(error, WorkerCrashed) or "is stopping" not in str(error)
        if started:
            message = ("the server stopped while this event was running: it did not finish, "
                       "and none of its writes were committed")
        else:
            message = ("the server stopped before this event started: it did not run, and "
                       "nothing of it was stored; send it again")
        return EventStopped(message, event_id=event.id, started=started)

    async def _dispatch(self, tenant: TenantId, event: Event) -> DispatchReply:
        started = time.monotonic()
        try:
            reply = reply_as(await self.pool.request(tenant, Dispatch(tenant, event)),
                             DispatchReply)
        except BaseException as error:
            if self._observer is not None:
                self._observer.dispatch_finished(tenant, event, None, error,
                                                 time.monotonic() - started)
            raise
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
        reply = reply_as(await self.pool.request(tenant, Status(tenant)), TenantStatus)
        return msgspec.structs.asdict(reply)

    async def status(self) -> list[dict[str, Any]]:
        return await self.pool.status()

    def worker_health(self, tenant: TenantId) -> dict[str, Any]:
        """The health of the worker slot the tenant is routed to (without asking it)."""
        return self.pool.worker_for(tenant).health()

    def quarantined_until(self, tenant: TenantId) -> float | None:
        """When the tenant's quarantine (after crashing workers) ends; None when it is not."""
        return self.pool.quarantine.quarantined().get(str(tenant))


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
