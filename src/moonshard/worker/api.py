"""The worker contracts: one interface whatever the topology.

A ``WorkerHandle`` is one incarnation of a worker (a thread, a process): it runs until it
stops or dies and never restarts itself. A ``Worker`` is what callers talk to: it stays
while incarnations come and go under its supervisor.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from moonshard.worker.messages import Request

__all__ = ["Worker", "WorkerHandle"]


class WorkerHandle(abc.ABC):
    """One running incarnation of a worker."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Returns once the worker takes requests."""

    @abc.abstractmethod
    async def request(self, request: Request, on_start: Callable[[], None] | None = None) -> Any:
        """Sends ``request`` and awaits the reply.

        ``on_start`` runs (on the caller's loop) when a dispatch begins to run. If the
        incarnation dies first, raises ``WorkerCrashed``.
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


class Worker(abc.ABC):
    """A supervised worker slot of a pool, reached by requests whatever runs it."""

    index: int

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def request(self, request: Request) -> Any:
        """Sends ``request`` to the current incarnation; a request that had not started when
        an incarnation died goes to its successor."""

    @abc.abstractmethod
    async def stop(self, deadline: float) -> None: ...

    @abc.abstractmethod
    def health(self) -> dict[str, Any]: ...
