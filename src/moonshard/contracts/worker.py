"""The worker contract: what a worker is asked, what it answers, how it is configured and reached.

Every topology (a thread, a process, later a remote node) speaks exactly this. Requests and
replies are typed values (msgspec structs, tagged, so one codec carries them between
processes: ``contracts.wire``); a request has one reply type, never a free-form dict. A worker
fails a request with a ``MoonshardError`` (``moonshard.errors``), which keeps its type and
fields across processes.

A ``WorkerHandle`` is one incarnation of a worker: it runs until it stops or dies and never
restarts itself. A ``Worker`` is what callers talk to: it stays while incarnations come and go
under its supervisor.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import msgspec

from moonshard.contracts.timers import TimerRef
from moonshard.errors import WorkerCrashed
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.tenants import TenantId

__all__ = [
    "Ack",
    "Arm",
    "Dispatch",
    "DispatchReply",
    "Ping",
    "Reload",
    "ReloadReply",
    "Reply",
    "Request",
    "Status",
    "Stop",
    "TenantLog",
    "TenantStatus",
    "TimerConfig",
    "Validate",
    "ValidateReply",
    "Worker",
    "WorkerConfig",
    "WorkerHandle",
    "WorkerStatus",
    "reply_as",
]

TenantLog = Callable[[TenantId, str, str, str], None]
"""Receives (tenant, level, template, message) for each line of a tenant's log."""


# -- requests ---------------------------------------------------------------------------------
class Dispatch(msgspec.Struct, frozen=True, tag=True):
    """Run ``event`` through ``tenant``'s templates. Reply: ``DispatchReply``."""

    tenant: TenantId
    event: Event


class Reload(msgspec.Struct, frozen=True, tag=True):
    """The tenant's template set changed: swap in the stored one before any later event.
    Reply: ``ReloadReply``."""

    tenant: TenantId


class Validate(msgspec.Struct, frozen=True, tag=True):
    """Compile and load a template in a scratch VM. Reply: ``ValidateReply``.

    Validation runs template code, so it runs where Lua runs: in a worker, under its limits.
    """

    tenant: TenantId
    name: str
    files: dict[str, str]


class Arm(msgspec.Struct, frozen=True, tag=True):
    """A timer was written outside the worker (the HTTP API): hold it if it is due soon.
    Reply: ``Ack``."""

    timer: TimerRef


class Status(msgspec.Struct, frozen=True, tag=True):
    """Report the worker's state, or one tenant's with ``tenant``.
    Reply: ``WorkerStatus``, or ``TenantStatus``."""

    tenant: TenantId | None = None


class Ping(msgspec.Struct, frozen=True, tag=True):
    """The liveness check: answered by the worker's event loop at once. Reply: ``Ack``."""


class Stop(msgspec.Struct, frozen=True, tag=True):
    """Finish what is queued and running within ``deadline`` seconds, then stop.
    Reply: ``Ack``."""

    deadline: float = 30.0


Request: TypeAlias = Dispatch | Reload | Validate | Arm | Status | Ping | Stop


# -- replies ----------------------------------------------------------------------------------
class DispatchReply(msgspec.Struct, frozen=True, tag=True):
    """Each subscribing template's result, in name order; ``dropped`` says why none ran."""

    results: list[HandlerResult]
    dropped: str | None = None


class ReloadReply(msgspec.Struct, frozen=True, tag=True):
    """Whether a cached set was swapped (False: nothing cached), and the stored version."""

    reloaded: bool
    version: int | None = None


class ValidateReply(msgspec.Struct, frozen=True, tag=True):
    """The events the validated template subscribes to."""

    events: tuple[str, ...]


class Ack(msgspec.Struct, frozen=True, tag=True):
    """Done, with nothing to say."""


class TenantStatus(msgspec.Struct, frozen=True, tag=True):
    """One tenant as its worker holds it."""

    resident: bool
    memory_bytes: int | None
    loaded_version: int | None
    queued: int
    running: bool
    quarantined: bool = False


class WorkerStatus(msgspec.Struct, frozen=True, tag=True):
    """One worker incarnation's state."""

    index: int
    tenants: int
    resident_vms: int
    vm_memory_bytes: int
    queued: int
    stopping: bool
    timers: dict[str, Any]
    quarantined: list[str] = msgspec.field(default_factory=list)


Reply: TypeAlias = DispatchReply | ReloadReply | ValidateReply | Ack | TenantStatus | WorkerStatus

_R = TypeVar("_R", DispatchReply, ReloadReply, ValidateReply, Ack, TenantStatus, WorkerStatus)


def reply_as(reply: Reply, kind: type[_R]) -> _R:
    """``reply`` as the type its request names; a worker that answered something else is a
    broken worker (``WorkerCrashed``), never a value passed on unchecked."""
    if not isinstance(reply, kind):
        raise WorkerCrashed(f"the worker answered {type(reply).__name__} where "
                            f"{kind.__name__} was due")
    return reply


# -- configuration ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class TimerConfig:
    """How a worker reads and fires its timers."""

    window_seconds: float = 30.0
    page_size: int = 5000
    # Batches being fired at once, and the most timers of one tenant in a batch.
    max_in_flight: int = 64
    batch_size: int = 64
    # Delays before each retry of a failed firing (TEMPLATES.md: 1, 2, 4, 8, 16, 32 s).
    backoff: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    # How often the service looks for timers written where it could not see them.
    idle_poll_seconds: float = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs to start; a worker process is given only this, over its
    own socket (never on its command line: the database URL may hold a password)."""

    index: int
    database_url: str = dataclasses.field(repr=False)  # may hold a password
    limits: Limits = dataclasses.field(default_factory=Limits)
    lua_threads: int = 4
    idle_seconds: float = 300.0
    max_resident_vms: int = 2000
    mailbox_size: int = 1000
    max_queued: int = 20_000
    # How many workers the pool has: this worker fires the timers of its share of tenants.
    workers: int = 1
    timers: TimerConfig = dataclasses.field(default_factory=TimerConfig)
    # Tenants with resume keys whose VMs are built at once when the worker starts.
    warm_up_concurrency: int = 8
    # How long a tenant abandoned after a stuck Lua call is refused (thread topology).
    quarantine_seconds: float = 60.0
    # How the worker reaches Discord: a moonshard.discord.DiscordConfig (it holds the bot
    # token, so it crosses only the worker's own socket), or the mapping it crossed as.
    discord: Any = dataclasses.field(default=None, repr=False)

    @property
    def shard(self) -> tuple[int, int]:
        """(index, count): the tenants whose ``(id >> 22) % count == index``."""
        return (self.index, self.workers)


# -- handles ----------------------------------------------------------------------------------
class WorkerHandle(abc.ABC):
    """One running incarnation of a worker."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Returns once the worker takes requests."""

    @abc.abstractmethod
    async def request(self, request: Request, on_start: Callable[[], None] | None = None) -> Reply:
        """Sends ``request`` and awaits the reply.

        ``on_start`` runs (on the caller's loop) when a dispatch begins to run. If the
        incarnation dies first, raises ``WorkerCrashed``; a worker's own refusal keeps its
        error type (``Overloaded``, ``TemplateError``, ``LimitExceeded``...).
        """

    @abc.abstractmethod
    async def wait_exit(self) -> str:
        """Waits until the incarnation has ended; says how (``"stopped"``, an exit code...)."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Ends the incarnation now, without draining."""

    @abc.abstractmethod
    async def stop(self, deadline: float) -> None:
        """Lets queued and running work finish within ``deadline`` seconds, then ends."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The process that runs it, where it has one of its own."""

    @property
    def node(self) -> str | None:
        """Where it runs, when that is another machine's business (the ray topology)."""
        return None

    @property
    def guilty(self) -> TenantId | None:
        """After a crash: the tenant whose stuck Lua call ended the incarnation, if one did
        (the supervisor quarantines that tenant only)."""
        return None


class Worker(abc.ABC):
    """A supervised worker slot of a pool, reached by requests whatever runs it."""

    index: int

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def request(self, request: Request) -> Reply:
        """Sends ``request`` to the current incarnation; a request that had not started when
        an incarnation died goes to its successor."""

    @abc.abstractmethod
    async def stop(self, deadline: float) -> None: ...

    @abc.abstractmethod
    def health(self) -> dict[str, Any]: ...
