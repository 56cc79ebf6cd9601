"""``moonshard serve``: the engine and the HTTP API in one event loop, and an orderly stop.

On SIGTERM or Ctrl-C: stop accepting connections and end log follow streams, let in-flight
requests and accepted dispatches finish within ``STOP_DEADLINE``, then leave the engine's
block, which drains the workers' queues and stops them. Past the deadline the workers are
stopped at once and every request still waiting is answered 503 ``stopping``, saying how far
its event got. A second signal stops at once (writes are transactional, so nothing is
half-written; unfinished events are lost), ending the worker processes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from moonshard.config import ConfigError, Settings
from moonshard.discord.config import DiscordConfig
from moonshard.engine import Engine
from moonshard.errors import ConfigurationError, SchemaError, StoreUnavailable
from moonshard.server.app import AdminTokenHome, create_app
from moonshard.server.logbook import LogBook
from moonshard.server.metrics import Metrics
from moonshard.store import safe_url
from moonshard.topology.pool import Topology
from moonshard.topology.ray.options import RayOptions

if TYPE_CHECKING:
    from moonshard.discord.gateway import DiscordGateway
    from moonshard.store.api import TokenStore

__all__ = ["check_buildable", "ensure_admin_token", "listen", "serve", "write_admin_token"]

# The exit status of a stop forced by a second signal.
EXIT_FORCED = 130


def check_buildable(settings: Settings) -> list[str]:
    """Refuses what is not built yet; returns warnings for what is skipped."""
    warnings: list[str] = []
    if settings.topology == "ray" and \
            settings.database_url.partition(":")[0].lower() == "sqlite":
        raise ConfigError(f"{settings.source_of('TOPOLOGY')}: the ray topology needs "
                          "PostgreSQL (set DATABASE_URL to a postgresql:// URL every node "
                          "reaches)")
    if settings.topology != "ray" and settings.ray_address is not None:
        warnings.append(f"{settings.source_of('RAY_ADDRESS')} is ignored: the topology is "
                        f"{settings.topology}, not ray")
    if settings.discord_token is not None and \
            DiscordConfig(token=settings.discord_token).bot_user_id is None:
        raise ConfigError(f"{settings.source_of('DISCORD_TOKEN')}: not a Discord bot token "
                          "(its first part is the bot's id; copy it from the developer portal)")
    return warnings


def listen(host: str, port: int) -> socket.socket:
    """Binds the API's listening socket before anything starts, so a taken port fails fast."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


async def ensure_admin_token(tokens: TokenStore, settings: Settings) -> str:
    """Makes sure the admin token works; returns where it is (a file path or a setting).

    Without ADMIN_TOKEN, the token is read from the data folder's ``admin-token`` file, or
    created there (mode 0600) at first start.
    """
    if settings.admin_token is not None:
        try:
            await tokens.ensure_admin(settings.admin_token)
        except ValueError as error:
            raise ConfigError(f"{settings.source_of('ADMIN_TOKEN')}: {error}") from None
        return settings.source_of("ADMIN_TOKEN")
    path = _admin_token_file(settings)
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    except OSError as error:
        raise ConfigError(f"cannot read the admin token file {path}: {error.strerror}") from None
    if existing:
        try:
            await tokens.ensure_admin(existing)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None
        return str(path)
    # No file (first start, or it was deleted): a new admin token, and the old one, whoever
    # may still hold it, ends in the same step.
    _, token = await tokens.rotate_admin()
    try:
        write_admin_token(path, token)
    except OSError as error:
        await tokens.revoke(token)
        raise ConfigError(f"cannot write the admin token file {path}: {error.strerror}") from None
    return str(path)


def write_admin_token(path: Path, token: str) -> None:
    """Writes the admin token file (mode 0600), replacing it in one step."""
    _write_private(path, token + "\n")


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` readable by this user only, replacing ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: ``serve`` owns the signals (uvicorn
    would re-raise a caught SIGTERM after its shutdown, killing the process before the
    engine drains)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Stopper:
    """What the signals do: the first asks for an orderly stop, the second ends at once."""

    def __init__(self, say: Callable[[str], None], deadline: float) -> None:
        self._say = say
        self._deadline = deadline
        self.server: _Server | None = None
        self.logbook: LogBook | None = None
        self.engine: Engine | None = None
        self.requested = asyncio.Event()
        # When the first signal came (loop time): in-flight work's deadline counts from it.
        self.requested_at: float | None = None

    def __call__(self, name: str) -> None:
        if self.requested.is_set():
            self._say(f"{name} again: stopping at once; events still running are not finished")
            self._kill_workers()
            os._exit(EXIT_FORCED)
        self.requested.set()
        self.requested_at = asyncio.get_running_loop().time()
        self._say(f"{name}: stopping; in-flight work has {self._deadline:g} s to finish "
                  "(send it again to stop at once)")
        if self.logbook is not None:
            self.logbook.close()
        if self.server is not None:
            self.server.should_exit = True

    def _kill_workers(self) -> None:
        # A worker process whose parent vanished would report its broken socket on the
        # shared stderr: end it first, so the forced stop stays one line.
        if self.engine is not None:
            self.engine.kill_worker_processes()

    @contextlib.contextmanager
    def installed(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for number in signals:
            loop.add_signal_handler(number, self, signal.Signals(number).name)
        try:
            yield
        finally:
            for number in signals:
                loop.remove_signal_handler(number)


async def serve(settings: Settings, say: Callable[[str], None]) -> int:
    """Runs the service until a signal stops it; returns the exit status."""
    for warning in check_buildable(settings):
        say(f"warning: {warning}")
    sock = listen(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    topology: Topology = "thread" if settings.topology == "thread" else \
        "ray" if settings.topology == "ray" else "process"
    stopper = _Stopper(say, settings.stop_deadline)
    with sock, stopper.installed():
        logbook = LogBook(keep_lines=settings.log_lines, keep_days=settings.log_days)
        metrics = Metrics()
        stopper.logbook = logbook
        async with _opened_engine(settings, topology, logbook, metrics) as engine, \
                _gateway(engine, settings, metrics, say) as gateway:
            stopper.engine = engine
            logbook.attach(engine.store.logs)
            where = await ensure_admin_token(engine.store.tokens, settings)
            app = create_app(engine, logbook=logbook, metrics=metrics,
                             admin_token=_admin_token_home(settings),
                             gateway_status=gateway.status if gateway else None)
            # uvicorn's own cut-off would answer a plain-text 500 to every request still
            # waiting; ours comes first (the deadline, then the workers' stop), so it is
            # only a backstop.
            backstop = settings.stop_deadline + settings.limits.hard_wall_seconds + 15
            server = _Server(uvicorn.Config(
                app, log_level="warning", access_log=False, lifespan="off",
                server_header=False, timeout_graceful_shutdown=math.ceil(backstop)))
            stopper.server = server
            shown = f"[{host}]" if ":" in host else host
            plural = "s" if settings.workers != 1 else ""
            say(f"moonshard: {settings.workers} {settings.topology} worker{plural}, "
                f"database {safe_url(settings.database_url)}")
            if engine.pool.placement_note is not None:
                say(f"ray: {engine.pool.placement_note}")
            say(f"admin token: {where}")
            say(f"listening on http://{shown}:{port} (Ctrl-C to stop)")
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(logbook.run(engine.store.logs))
                enforcer = tasks.create_task(
                    _enforce_deadline(engine, server, stopper, settings.stop_deadline, say))
                if not stopper.requested.is_set():
                    await server.serve(sockets=[sock])
                sock.close()  # uvicorn closes it too; before serving, nobody else would
                await _finish_background(engine, stopper.requested_at, settings.stop_deadline)
                enforcer.cancel()  # a stop it began goes on: Engine.stop_workers is shielded
                # The workers' own drain (timers, events they emitted) gets what is left of
                # the deadline, so the whole stop fits in the deadline and the hard limit.
                loop = asyncio.get_running_loop()
                since = stopper.requested_at if stopper.requested_at is not None \
                    else loop.time()
                await engine.stop_workers(max(0.0, since + settings.stop_deadline - loop.time()))
                logbook.stop()  # the workers' last lines are stored before the store closes
    say("stopped")
    return 0


@contextlib.asynccontextmanager
async def _opened_engine(settings: Settings, topology: Topology, logbook: LogBook,
                         metrics: Metrics) -> AsyncIterator[Engine]:
    """``Engine.open`` with the store's failures said as the setting that caused them."""
    discord = None
    if settings.discord_token is not None:
        discord = DiscordConfig(token=settings.discord_token, api_url=settings.discord_api_url)
    opened = Engine.open(
        settings.database_url, topology=topology, workers=settings.workers,
        limits=settings.limits, log=logbook, observer=metrics,
        stop_deadline=settings.stop_deadline, discord=discord,
        ray=RayOptions(address=settings.ray_address))
    try:
        engine = await opened.__aenter__()
    except (StoreUnavailable, SchemaError, ValueError) as error:
        raise ConfigError(f"{_setting('DATABASE_URL', settings)}: {error}") from None
    except ConfigurationError as error:
        raise ConfigError(f"{_setting('TOPOLOGY', settings)}: {error}") from None
    try:
        yield engine
    except BaseException as error:
        if not await opened.__aexit__(type(error), error, error.__traceback__):
            raise
    else:
        await opened.__aexit__(None, None, None)


def _admin_token_home(settings: Settings) -> AdminTokenHome:
    if settings.admin_token is not None:
        return AdminTokenHome(setting=settings.source_of("ADMIN_TOKEN"))
    return AdminTokenHome(file=_admin_token_file(settings), write=write_admin_token)


def _admin_token_file(settings: Settings) -> Path:
    """Said in full (the start-up summary, rotate-admin's answer): with PostgreSQL it is in
    ./moonshard-data, which means nothing to a client in another folder."""
    return settings.admin_token_path.absolute()


def _setting(name: str, settings: Settings) -> str:
    source = settings.source_of(name)
    return f"{name} (default)" if source == "default" else source


async def _enforce_deadline(engine: Engine, server: _Server, stopper: _Stopper,
                            deadline: float, say: Callable[[str], None]) -> None:
    """Once the stop's deadline has passed with work still in flight, stops the workers: what
    was running or queued then fails, and each waiting request is told how far its event got
    (``moonshard.server.app``), instead of uvicorn cutting it off."""
    await stopper.requested.wait()
    loop = asyncio.get_running_loop()
    assert stopper.requested_at is not None
    await asyncio.sleep(max(0.0, stopper.requested_at + deadline - loop.time()))
    requests = len(server.server_state.tasks)
    background = engine.background_dispatches
    if requests or background:
        say(f"warning: {requests} requests and {background} accepted dispatches did not "
            f"finish within {deadline:g} s; stopping the workers now (events still running "
            "are not finished; a handler's writes commit only when it returns)")
    await engine.stop_workers(0.0)


@contextlib.asynccontextmanager
async def _gateway(engine: Engine, settings: Settings, metrics: Metrics,
                   say: Callable[[str], None]) -> AsyncIterator[DiscordGateway | None]:
    """With a Discord token: the gateway connection, for as long as the server runs. It is
    ended before the engine drains, so no new event arrives while it does."""
    if settings.discord_token is None:
        yield None
        return
    from moonshard.discord.gateway import DiscordGateway, GatewayCollector  # noqa: PLC0415
    from moonshard.discord.intents import default_intents, intents_names  # noqa: PLC0415

    intents = settings.discord_intents if settings.discord_intents is not None else \
        default_intents()
    gateway = DiscordGateway(engine, settings.discord_token, settings.discord_api_url, intents)
    metrics.registry.register(GatewayCollector(gateway))
    say(f"discord: gateway via {settings.discord_api_url} (intents: "
        f"{', '.join(intents_names(intents)) or 'none'})")
    runner = asyncio.create_task(gateway.run())
    try:
        yield gateway
    finally:
        await gateway.stop()
        await runner


async def _finish_background(engine: Engine, since: float | None, deadline: float) -> None:
    """Waits for dispatches accepted without waiting (202s) until the workers' stop ends
    them; the engine's exit would wait for them anyway, without a deadline."""
    loop = asyncio.get_running_loop()
    until = (since if since is not None else loop.time()) + deadline
    # The engine exposes a count, not an event to wait on; polling it is cheap.
    while engine.background_dispatches and loop.time() < until:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if engine.background_dispatches:
        await engine.stop_workers(0.0)
