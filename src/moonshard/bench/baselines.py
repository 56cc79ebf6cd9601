"""The baselines the worker benchmarks are compared with, kept minimal and honest.

- ``RawLupaTenants``: one bare lupa runtime per tenant with the handler loaded, called directly
  on one thread: no sandbox, no limits, no value conversion, no queue. The limit of an engine
  built on lupa.
- ``ThreadPerTenant``: the strategy of the system moonshard replaces: one OS thread per tenant,
  each with its own lupa runtime and a queue of events, fed from the caller's event loop.

Both call the handler as ``handler(nil, event)`` where ``event`` is a Lua table made from the
event's name, so the handler's own work is the same as in a tenant VM.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lupa import lua54

__all__ = ["RawLupaTenants", "ThreadPerTenant", "load_handler"]


def _runtime() -> lua54.LuaRuntime:
    return lua54.LuaRuntime(register_eval=False, unpack_returned_tuples=True)


def load_handler(runtime: lua54.LuaRuntime, source: str, handler: str) -> Any:
    """Runs a template's ``init.lua`` in ``runtime`` and returns its ``handler`` function."""
    handlers = runtime.execute(source)
    function = handlers[handler]
    if function is None:
        raise ValueError(f"the template has no {handler} handler")
    return function


class RawLupaTenants:
    """Pre-built bare lupa runtimes, one per tenant, called on the calling thread."""

    __slots__ = ("_events", "_handlers", "_table_makers", "build_seconds")

    def __init__(self, sources: Sequence[str], handler: str) -> None:
        started = time.perf_counter()
        runtimes = [_runtime() for _ in sources]
        self._handlers = [load_handler(runtime, source, handler)
                          for runtime, source in zip(runtimes, sources, strict=True)]
        self._events = [runtime.table_from({"name": handler}) for runtime in runtimes]
        self._table_makers = [runtime.table_from for runtime in runtimes]
        # Creating every runtime and loading its template, on one thread.
        self.build_seconds = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self._handlers)

    def time_calls(self, count: int) -> float:
        """Seconds to call tenant ``n % tenants`` for each n in range(count)."""
        handlers, events, tenants = self._handlers, self._events, len(self._handlers)
        started = time.perf_counter()
        for number in range(count):
            tenant = number % tenants
            handlers[tenant](None, events[tenant])
        return time.perf_counter() - started

    def time_converted_calls(self, count: int, name: str, event_id: str, at: float,
                             data: Mapping[str, object]) -> float:
        """Like ``time_calls``, but each call first converts the event (name, id, at, data:
        what a dispatch carries) into a fresh Lua table, as a bare engine on lupa must."""
        handlers, tenants = self._handlers, len(self._handlers)
        tables = self._table_makers
        started = time.perf_counter()
        for number in range(count):
            tenant = number % tenants
            table_from = tables[tenant]
            handlers[tenant](None, table_from({
                "name": name, "id": event_id, "at": at, "data": table_from(dict(data))}))
        return time.perf_counter() - started


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[object]"]


class ThreadPerTenant:
    """One OS thread per tenant, each owning a lupa runtime and draining its own queue.

    Start with ``start()`` (returns once every thread has loaded its template), feed with
    ``await call(tenant)``, end with ``stop()``.
    """

    __slots__ = ("_handler", "_queues", "_ready", "_sources", "_threads")

    def __init__(self, sources: Sequence[str], handler: str) -> None:
        self._sources = tuple(sources)
        self._handler = handler
        self._queues: list[queue.SimpleQueue[_Job | None]] = [
            queue.SimpleQueue() for _ in self._sources]
        self._ready = threading.Semaphore(0)
        self._threads = [
            threading.Thread(target=self._serve, args=(index,), daemon=True,
                             name=f"bench-tenant-{index}")
            for index in range(len(self._sources))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        for _ in self._threads:
            self._ready.acquire()

    def stop(self) -> None:
        for mailbox in self._queues:
            mailbox.put(None)
        for thread in self._threads:
            thread.join()

    async def call(self, tenant: int) -> object:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[object] = loop.create_future()
        self._queues[tenant].put((loop, reply))
        return await reply

    def _serve(self, index: int) -> None:
        runtime = _runtime()
        function = load_handler(runtime, self._sources[index], self._handler)
        event = runtime.table_from({"name": self._handler})
        mailbox = self._queues[index]
        self._ready.release()
        while (job := mailbox.get()) is not None:
            loop, reply = job
            try:
                value = function(None, event)
            except Exception as error:  # handed to the caller, the thread lives on
                loop.call_soon_threadsafe(_settle, reply, None, error)
            else:
                loop.call_soon_threadsafe(_settle, reply, value, None)


def _settle(reply: asyncio.Future[object], value: object, error: BaseException | None) -> None:
    if reply.done():
        return
    if error is not None:
        reply.set_exception(error)
    else:
        reply.set_result(value)
