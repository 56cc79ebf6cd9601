"""The CPU alarm of a worker's Lua threads: a run's CPU hook is set only near its budget's end.

While any count hook is set, Lua 5.4 runs every instruction on its slow path: a hook that
never fires still makes a tight loop about 2.4 times slower. So the VMs of a worker with an
alarm start each run's coroutine without its hook, and the alarm's thread, every ``tick``,
sends a signal to each Lua thread whose step has run for as long as its remaining CPU budget
(CPU time never runs ahead of wall time on one thread, so the budget cannot be spent sooner).
The handler (``_cpualarm``, in C) sets the hook on the coroutine that thread is running, from
the thread itself, as Lua's own interpreter does on Ctrl-C; the hook then checks the CPU clock
every ``hook_count`` instructions, as it would have from the start. The limit is kept as
before; it is noticed at most one ``tick`` later.

Where the C part cannot be installed (not Linux, a lupa without Lua's C API symbols), the
alarm is unavailable and VMs set the hook from the start.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from lupa import lua54

__all__ = ["CpuAlarm"]

_log = logging.getLogger(__name__)

# A real-time signal nothing else in the process uses (glibc keeps the first ones).
_SIGNAL_OFFSET = 5
_TICK_SECONDS = 0.002


def _install(hook_count: int) -> bool:
    """Installs the signal handler once per process; False where it cannot be."""
    try:
        from moonshard.sandbox import _cpualarm  # noqa: PLC0415 - optional C part
    except ImportError:
        _log.warning("the CPU alarm is not built: Lua runs with its CPU hook always set")
        return False
    # A coroutine whose hook the debug library set: its hook is the dispatcher to copy.
    probe_runtime = lua54.LuaRuntime(register_eval=False, register_builtins=False)
    probe, address = probe_runtime.execute(
        "local count = ... "
        "local co = coroutine.create(function() end) "
        "debug.sethook(co, function() end, '', count) "
        "return co, string.format('%p', co)", hook_count)
    try:
        _cpualarm.install(lua54.__file__, int(str(address), 16),
                          signal.SIGRTMIN + _SIGNAL_OFFSET)
    except (OSError, ValueError) as error:
        _log.warning("the CPU alarm could not be installed (%s): Lua runs with its CPU hook "
                     "always set", error)
        return False
    finally:
        del probe  # the probe runtime, and its coroutine, go with this frame
    return True


class CpuAlarm:
    """Owned by one worker's Lua threads; enter it to start its thread.

    A thread that runs steps is ``attached`` for as long as it lives (the alarm signals only
    attached threads, so never one that has ended); ``enter`` and ``leave`` are called on it
    around each step of a run.
    """

    __slots__ = ("_attached", "_busy", "_due", "_enter", "_leave", "_lock", "_signal", "_stop",
                 "_thread", "_tick")

    def __init__(self, enter: Callable[[int], None], leave: Callable[[], None],
                 tick: float) -> None:
        self._enter = enter
        self._leave = leave
        self._tick = tick
        self._signal = signal.SIGRTMIN + _SIGNAL_OFFSET
        # Lua thread ident -> monotonic time at which its step's budget may be spent.
        self._due: dict[int, float] = {}
        # The threads that may be signalled; a thread leaves this set before it ends.
        self._attached: set[int] = set()
        self._lock = threading.Lock()
        # Set while steps may be running: an idle alarm sleeps instead of ticking.
        self._busy = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="moonshard-cpu-alarm",
                                        daemon=True)

    @classmethod
    def open(cls, hook_count: int, tick: float = _TICK_SECONDS) -> CpuAlarm | None:
        """The alarm, or None where it cannot be installed."""
        if not _install(hook_count):
            return None
        from moonshard.sandbox import _cpualarm  # noqa: PLC0415 - installed above

        return cls(_cpualarm.enter, _cpualarm.leave, tick)

    def __enter__(self) -> CpuAlarm:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stops the alarm's thread (before the Lua threads end: it signals them)."""
        self._stop.set()
        self._busy.set()
        if self._thread.is_alive():
            self._thread.join()

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """The calling thread may run steps (and be signalled) inside this block. It unblocks
        the alarm's signal, since a thread inherits the signal mask of the thread that
        started it, which an embedding host may have blocked."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {self._signal})
        ident = threading.get_ident()
        with self._lock:
            self._attached.add(ident)
        try:
            yield
        finally:
            with self._lock:
                self._attached.discard(ident)
                self._due.pop(ident, None)

    def enter(self, state: int, budget: float) -> None:
        """On a Lua thread: a step of the coroutine at ``state`` starts, with ``budget``
        CPU seconds left. The thread's state is set before its due time, so a signal always
        finds the step it is meant for (or a later one, armed early: harmless). Raises when
        the alarm is not running: the caller then sets the hook itself."""
        ident = threading.get_ident()
        if not self._thread.is_alive() or self._stop.is_set() or ident not in self._attached:
            raise RuntimeError("the CPU alarm is not running, or not for this thread")
        self._enter(state)
        self._due[ident] = time.monotonic() + max(0.0, budget)
        if not self._busy.is_set():
            self._busy.set()

    def leave(self) -> None:
        """On a Lua thread: its step ended."""
        self._due.pop(threading.get_ident(), None)
        self._leave()

    def _watch(self) -> None:
        due, tick, signum, busy = self._due, self._tick, self._signal, self._busy
        while not self._stop.wait(tick):
            if not due:
                # Cleared before the checks: a step entered after it sets it again (enter
                # writes its entry first), and so does close (after setting stop), so neither
                # waits for a wake-up that already happened.
                busy.clear()
                if not due and not self._stop.is_set():
                    busy.wait()
                continue
            now = time.monotonic()
            for ident, at in list(due.items()):
                if at > now:
                    continue
                with self._lock:  # an attached thread has not ended: it detaches first
                    if due.pop(ident, None) is not None and ident in self._attached:
                        signal.pthread_kill(ident, signum)
