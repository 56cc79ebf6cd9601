"""SQLite connections, each used by its own thread, so the event loop never blocks on I/O.

Callers on any event loop submit jobs and await futures. A thread takes every job queued
since it last looked and answers them with one wake-up per loop, which keeps a busy store from
paying one thread hand-off per call. Write jobs (``transact``) taken together share one
``BEGIN IMMEDIATE`` transaction, each inside its own savepoint (group commit): one job's
failure undoes only that job, and no job is answered before the shared ``COMMIT``. With
``snapshot_reads``, read jobs taken together share one read transaction: SQLite then takes its
WAL read lock once per batch instead of once per statement, and every job of the batch was
queued before that snapshot, so each still sees everything committed before it asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

__all__ = ["ConnectionThreads"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Most jobs taken per wake-up, and most writes sharing one transaction: enough to amortise
# the hand-off and the commit, small enough that the write lock is held only briefly.
_MAX_BATCH = 64
_MAX_GROUP = 32

_Outcome = tuple["asyncio.Future[Any]", bool, Any]
"""(future, ok, result or exception)"""


class _Job:
    __slots__ = ("args", "fn", "future", "kwargs", "loop", "write")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop, write: bool,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.loop = loop
        self.write = write


class _Stop:
    """Ends the one thread that takes it."""

    __slots__ = ("future", "loop")

    def __init__(self, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        self.future = future
        self.loop = loop


class ConnectionThreads:
    """``count`` autocommit ``sqlite3.Connection``s, one per thread, serving one job queue.

    Create it on a running event loop, await ``started()``, and ``close()`` it when done.
    """

    __slots__ = ("_closed", "_jobs", "_lock", "_ready", "_snapshot_reads", "_stopped")

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], *, name: str, count: int = 1,
        snapshot_reads: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        # Guards _closed against a submit racing close(): no job is queued behind the stops.
        self._lock = threading.Lock()
        self._closed = False
        self._stopped: asyncio.Future[None] | None = None
        self._snapshot_reads = snapshot_reads
        self._ready: list[asyncio.Future[None]] = []
        for index in range(count):
            ready: asyncio.Future[None] = loop.create_future()
            self._ready.append(ready)
            threading.Thread(target=self._main, args=(connect, ready, loop), daemon=True,
                             name=f"{name}-{index}").start()

    async def started(self) -> None:
        """Waits until every connection is open; raises what opening one raised."""
        await asyncio.gather(*self._ready)

    def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, _P], _T], /,
        *args: _P.args, **kwargs: _P.kwargs,
    ) -> asyncio.Future[_T]:
        """Runs ``fn(conn, *args)`` on a thread; ``fn`` manages any transaction itself."""
        return self._submit(fn, args, kwargs, write=False)

    def transact(
        self, fn: Callable[Concatenate[sqlite3.Connection, _P], _T], /,
        *args: _P.args, **kwargs: _P.kwargs,
    ) -> asyncio.Future[_T]:
        """Runs ``fn(conn, *args)`` inside a write transaction; its error undoes only its work."""
        return self._submit(fn, args, kwargs, write=True)

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
        write: bool,
    ) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        with self._lock:
            if self._closed:
                future.set_exception(RuntimeError("the store is closed"))
            else:
                self._jobs.put(_Job(fn, args, kwargs, future, loop, write))
        return future

    async def close(self) -> None:
        """Finishes the jobs already queued, then closes the connections and ends the threads."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._closed = True
            stopped = self._stopped
            if stopped is None:
                stopped = self._stopped = loop.create_future()
                first = True
            else:
                first = False
        if not first:
            await stopped
            return
        opened = await asyncio.gather(*self._ready, return_exceptions=True)
        stops = [_Stop(loop.create_future(), loop)
                 for outcome in opened if not isinstance(outcome, BaseException)]
        for stop in stops:
            self._jobs.put(stop)
        await asyncio.gather(*(stop.future for stop in stops))
        # Jobs queued while no connection could be opened: nobody else will answer them.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Job):
                job.future.set_exception(RuntimeError("the store is closed"))
        stopped.set_result(None)

    # -- on a thread ------------------------------------------------------------------------
    def _main(
        self, connect: Callable[[], sqlite3.Connection], ready: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        try:
            conn = connect()
        except BaseException as error:  # reported to started()
            _post(loop, [(ready, False, error)])
            return
        _post(loop, [(ready, True, None)])
        try:
            while True:
                batch = self._take()
                stop = _serve(conn, batch, snapshot_reads=self._snapshot_reads)
                if stop is not None:
                    conn.close()
                    _post(stop.loop, [(stop.future, True, None)])
                    return
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _take(self) -> list[_Job | _Stop]:
        """The next job and whatever is queued behind it, up to the first stop (which ends
        only this thread: the other stops are left for the other threads)."""
        first = self._jobs.get()
        batch: list[_Job | _Stop] = [first]
        while not isinstance(batch[-1], _Stop) and len(batch) < _MAX_BATCH:
            try:
                batch.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return batch


def _serve(
    conn: sqlite3.Connection, batch: list[_Job | _Stop], *, snapshot_reads: bool,
) -> _Stop | None:
    """Runs a batch of jobs and answers them; returns the stop request if one came."""
    outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    stop: _Stop | None = None
    index = 0
    while index < len(batch):
        job = batch[index]
        if isinstance(job, _Stop):
            stop = job
            break
        group = [job]
        index += 1
        while index < len(batch) and len(group) < _MAX_GROUP:
            following = batch[index]
            if not isinstance(following, _Job) or following.write != job.write:
                break
            group.append(following)
            index += 1
        if job.write:
            _run_group(conn, group, outcomes)
        elif snapshot_reads and len(group) > 1:
            _run_reads(conn, group, outcomes)
        else:
            for read in group:
                _run_one(conn, read, outcomes)
    for loop, items in outcomes.items():
        _post(loop, items)
    return stop


def _run_one(
    conn: sqlite3.Connection, job: _Job,
    outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]],
) -> None:
    try:
        result = job.fn(conn, *job.args, **job.kwargs)
    except Exception as error:  # handed to the caller
        outcomes.setdefault(job.loop, []).append((job.future, False, error))
    else:
        outcomes.setdefault(job.loop, []).append((job.future, True, result))


def _run_reads(
    conn: sqlite3.Connection, group: list[_Job],
    outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]],
) -> None:
    """Runs read jobs inside one read transaction (one snapshot, one WAL read lock)."""
    try:
        conn.execute("BEGIN")
    except Exception:  # run them one by one, each in its own implicit transaction
        for job in group:
            _run_one(conn, job, outcomes)
        return
    try:
        for job in group:
            _run_one(conn, job, outcomes)
    finally:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")


def _run_group(
    conn: sqlite3.Connection, group: list[_Job],
    outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]],
) -> None:
    """Runs write jobs in one transaction, one savepoint each, and records their outcomes."""
    answered: list[tuple[_Job, bool, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
    except Exception as error:  # e.g. the database stayed locked past busy_timeout
        for job in group:
            outcomes.setdefault(job.loop, []).append((job.future, False, error))
        return
    single = len(group) == 1
    try:
        for job in group:
            if not single:
                conn.execute("SAVEPOINT job")
            try:
                result = job.fn(conn, *job.args, **job.kwargs)
            except Exception as error:  # handed to the caller
                if not conn.in_transaction:
                    # SQLite gave up the whole transaction (I/O error, full disk): the work of
                    # the jobs before this one is lost with it.
                    raise
                conn.execute("ROLLBACK" if single else "ROLLBACK TO job")
                if not single:
                    conn.execute("RELEASE job")
                answered.append((job, False, error))
            else:
                if not single:
                    conn.execute("RELEASE job")
                answered.append((job, True, result))
        if conn.in_transaction:
            conn.execute("COMMIT")
    except Exception as error:  # the whole group failed; nothing was committed
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        for job in group:
            outcomes.setdefault(job.loop, []).append((job.future, False, error))
        return
    for job, ok, value in answered:
        outcomes.setdefault(job.loop, []).append((job.future, ok, value))


def _post(loop: asyncio.AbstractEventLoop, items: list[_Outcome]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[_Outcome]) -> None:
    for future, ok, value in items:
        if future.done():  # cancelled by its caller meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(cast(BaseException, value))
