"""The calls in flight to one worker incarnation: pending, started, answered, or lost in a crash.

Every topology keeps its calls here, over its own transport (a socket pair to a process,
the loop of a thread, a Ray actor's calls): a call that had not started when its incarnation
died fails with ``WorkerCrashed`` before it ran, which tells the supervisor to send it to the
successor.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from moonshard.contracts.worker import Reply
from moonshard.errors import MoonshardError, WorkerCrashed

__all__ = ["PendingCalls"]


class _Call:
    __slots__ = ("noted", "on_start", "reply", "started")

    def __init__(self, reply: asyncio.Future[Reply], on_start: Callable[[], None] | None) -> None:
        self.reply = reply
        self.on_start = on_start
        self.started = False
        # Set from another thread by note_started (a plain attribute write).
        self.noted = False


class PendingCalls:
    """Owned by one incarnation's handle, used on its owner's loop."""

    __slots__ = ("_calls", "_crash", "_ids")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._crash: WorkerCrashed | None = None

    def open(self, on_start: Callable[[], None] | None) -> tuple[int, asyncio.Future[Reply]]:
        """A new call: its id and the future of its reply. Fails once the incarnation died."""
        if self._crash is not None:
            raise self._crash
        call_id = next(self._ids)
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = _Call(reply, on_start)
        return call_id, reply

    def started(self, call_id: int) -> None:
        call = self._calls.get(call_id)
        if call is not None and not call.started:
            call.started = True
            if call.on_start is not None:
                call.on_start()

    def note_started(self, call_id: int) -> None:
        """From any thread: the call began. Its ``on_start`` runs on the owner's loop before
        the call's reply or failure is delivered (which is when anyone can ask), so a start
        costs no wake-up of the owner's loop of its own."""
        call = self._calls.get(call_id)
        if call is not None:
            call.noted = True

    def answered(self, call_id: int, reply: Reply) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None and not call.reply.done():
            _run_noted_start(call)
            call.reply.set_result(reply)

    def failed(self, call_id: int, error: MoonshardError) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None and not call.reply.done():
            _run_noted_start(call)
            call.reply.set_exception(error)

    def forget(self, call_id: int) -> None:
        self._calls.pop(call_id, None)

    def crashed(self, crash: WorkerCrashed) -> None:
        """The incarnation is gone: every call still in flight fails with ``crash``."""
        self._crash = crash
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.reply.done():
                _run_noted_start(call)
                call.reply.set_exception(crash)


def _run_noted_start(call: _Call) -> None:
    if call.noted and not call.started:
        call.started = True
        if call.on_start is not None:
            call.on_start()
