"""One tenant VM: a restricted Lua 5.4 state holding that tenant's loaded templates."""

from __future__ import annotations

import abc
import dataclasses
import importlib.resources
import json
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from lupa import lua54

from moonshard.errors import TemplateError, ValueConversionError
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.sandbox.convert import MAX_DEPTH, DoorLimit, ValueDoor
from moonshard.sandbox.cpualarm import CpuAlarm
from moonshard.sandbox.libraries import BUILTIN_LIBRARY_SOURCES
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["HOOK_COUNT", "HostRequest", "LogSink", "LuaRun", "NowAnswerer", "TenantVM"]

# Instructions between two checks of the CPU clock (the hook itself costs little per tick).
HOOK_COUNT = 1000
# How the host talks about a broken limit (the kernel prefixes the template's file and line).
_LIMIT_MESSAGES = MappingProxyType({
    "memory": "memory limit exceeded", "cpu": "cpu time limit exceeded"})

LogSink = Callable[[str, str, str], None]
"""Receives (level, template, message) for every print and ctx.log of a template."""


def _deny_attribute(obj: object, name: object, is_setting: bool) -> object:
    # Defence in depth: no Python attribute is ever reachable from Lua, even by accident.
    raise AttributeError("Python attributes are not reachable from templates")


def _prelude_source() -> str:
    return (importlib.resources.files("moonshard.sandbox") / "lua" / "prelude.lua").read_text()


def _kernel_part_sources() -> Mapping[str, str]:
    folder = importlib.resources.files("moonshard.sandbox") / "lua" / "parts"
    return {entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
            for entry in folder.iterdir() if entry.name.endswith(".lua")}


def _compile_kernel(source: str) -> bytes:
    """Kernel code as a stripped binary chunk, compiled once per process.

    Parsing 40 KB of Lua was most of a VM's build; each VM now loads this chunk instead (lupa
    cannot share a compiled function between states). Stripped: the kernel's frames carry no
    source or line (``=?``, line -1), which the kernel's traceback filter skips, and its
    prototypes take a third less of every VM's memory. Only the kernel is ever loaded in
    binary: templates' ``load`` stays text-only.
    """
    compiler = lua54.LuaRuntime(register_eval=False, register_builtins=False, encoding=None)
    dump = compiler.eval(
        b"function(source) return string.dump(assert(load(source, '=kernel', 't')), true) end")
    return bytes(dump(source.encode()))


# Built at import: the kernel is part of the package and never changes while it runs.
_KERNEL_CHUNK: bytes = _compile_kernel(_prelude_source())
# The kernel parts (string, table, json, the library loader) a VM loads on first touch.
_KERNEL_PARTS: Mapping[str, bytes] = MappingProxyType(
    {name: _compile_kernel(source) for name, source in _kernel_part_sources().items()})


@dataclasses.dataclass(frozen=True, slots=True)
class HostRequest:
    """A template's call that the host must answer (``family.op(*args)``)."""

    family: str
    op: str
    args: list[JsonValue]


class NowAnswerer(abc.ABC):
    """Answers some host calls of a run at once, on the Lua thread, inside the run's step
    (the template's call never leaves Lua as a host request)."""

    @abc.abstractmethod
    def answers_now(self, family: str, op: str) -> bool:
        """Whether ``answer_now`` may answer this call (asked before reading its arguments)."""

    @abc.abstractmethod
    def answer_now(self, family: str, op: str,
                   args: list[JsonValue]) -> tuple[bool, JsonValue] | None:
        """The answer as the driver would give it, (True, value) or (False, message), or
        None: the call leaves Lua as a host request after all. Must never wait for the event
        loop."""


class TenantVM:
    """The Lua state of one tenant. Used by one thread at a time; never shared between tenants.

    ``broken`` names the limit that made the VM unusable (``"memory"`` or ``"wall"``); a broken
    VM must be discarded and rebuilt. Every value that crosses between this VM and the host
    goes through its ``ValueDoor``; every call into Lua is handed only numbers, booleans and
    tables the door built, so nothing allocates in Lua outside a protected call.
    """

    __slots__ = (
        "_alarm",
        "_door",
        "_handlers",
        "_kernel",
        "_log",
        "_now",
        "_runtime",
        "_step_budget",
        "broken",
        "limits",
        "tenant",
    )

    def __init__(self, tenant: TenantId, limits: Limits, log: LogSink, *,
                 cpu_alarm: CpuAlarm | None = None) -> None:
        """With ``cpu_alarm`` (only where every step runs on a thread it watches), a run's
        CPU hook is set only when its budget is close to spent (see ``CpuAlarm``)."""
        self.tenant = tenant
        self.limits = limits
        self.broken: str | None = None
        self._log = log
        self._alarm = cpu_alarm
        # The CPU budget of the step about to run, for the alarm (set on the stepping thread).
        self._step_budget = 0.0
        # The answerer of the run being stepped (set only during its step), for answer_now.
        self._now: NowAnswerer | None = None
        # template name -> the events it handles, as its init.lua returned them
        self._handlers: dict[str, frozenset[str]] = {}
        self._runtime = lua54.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True,
            attribute_filter=_deny_attribute, max_memory=limits.memory_bytes,
        )
        bridge = self._runtime.table_from({
            "answer_now": self._answer_now,
            "clock": time.thread_time,
            "json_decode": self._json_decode,
            "kernel_part": self._kernel_part,
            "library_source": self._library_source,
            "log": self._log_line,
            "running": self._running,
        })
        config = self._runtime.table_from({
            "tenant_kind": tenant.kind,
            "tenant_id": tenant.id,
            "hook_count": HOOK_COUNT,
            "pattern_steps": limits.pattern_steps,
            "log_line_bytes": limits.log_line_bytes,
            "log_lines_per_run": limits.log_lines_per_run,
            "load_bytes": limits.template_source_bytes,
            "json_encode_bytes": limits.memory_bytes,
            "json_max_depth": MAX_DEPTH,
            "lazy_hook": cpu_alarm is not None,
            "libraries": self._runtime.table_from(list(BUILTIN_LIBRARY_SOURCES)),
        })
        # lupa copies the chunk into Lua in its own C code: no limit may break there.
        self._runtime.set_max_memory(0)
        try:
            kernel_chunk = self._runtime.globals().load(_KERNEL_CHUNK, "=kernel", "b")
        finally:
            self._runtime.set_max_memory(limits.memory_bytes)
        self._kernel = kernel_chunk(bridge, config)
        self._door = ValueDoor(self._runtime, self._kernel, limits.memory_bytes)

    # -- the bridge functions templates reach through closures -----------------------------
    # Each answers (True, box), (False, box of a message) or (None, limit kind) and never
    # raises: a Python exception would reach Lua as a Python object.
    def _json_decode(self, text: str) -> tuple[bool | None, Any]:
        try:
            # Every JSON value costs Lua at least one 16-byte slot: refuse before decoding
            # what could not fit, so the host never holds much more than the VM may.
            separators = text.count(",") + text.count(":") + text.count("[") + text.count("{")
            if 16 * separators > self._door.remaining():
                return None, "memory"
            decoded = json.loads(text, parse_int=_parse_json_int, parse_constant=_no_constant)
            return True, self._door.box(decoded) if decoded is not None else self._door.null_box()
        except DoorLimit:
            return None, "memory"
        except json.JSONDecodeError as error:
            return False, self._door.box_text(
                f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}")
        except RecursionError:
            return False, self._door.box_text("JSON nests too deeply")
        except ValueConversionError as error:
            return False, self._door.box_text(str(error))
        except Exception:
            return False, self._door.box_text("the text could not be decoded")

    def _running(self, address: str) -> bool:
        """A step of the run whose coroutine is at ``address`` starts on this thread: True
        when the alarm watches it, else the kernel sets the hook at once. Never raises."""
        alarm = self._alarm
        if alarm is None:
            return False
        try:
            alarm.enter(int(address, 16), self._step_budget)
        except Exception:
            return False
        return True

    def _answer_now(self, family: str, op: str, packed: Any) -> Any:
        """The answer box of a host call the running run's answerer gives at once (what
        ``LuaRun.step`` would hand the next step), or None: the call yields as usual.

        It runs inside a Python callback of the template's coroutine, so it never raises, and
        it builds Lua values only through the door (limit lifted, size estimated first).
        """
        answerer = self._now
        if answerer is None:
            return None
        door = self._door
        try:
            if not answerer.answers_now(family, op):
                return None
            # One lift for the whole answer (the door's own lifts nest inside it for free).
            with door.lifted():
                try:
                    args = self._read_arguments(packed)
                except ValueConversionError as error:
                    # As the awaited path answers it: at the template's line, unprefixed.
                    return door.box_text(False, str(error))
                answer = answerer.answer_now(family, op, args)
                if answer is None:
                    return None
                return self._box_answer(answer)
        except Exception:
            # Nothing answered: the call leaves Lua as a host request, whose path reports
            # whatever failed here.
            return None

    def _read_arguments(self, packed: Any) -> list[JsonValue]:
        """A host call's arguments (the kernel's ``table.pack``), read raw and bounded."""
        door, budget = self._door, self.limits.memory_bytes
        args: list[JsonValue] = []
        for index in range(1, int(packed["n"]) + 1):
            what = f"argument #{index}"
            value = door.item(packed, index, what)
            # A key is a string: within the budget it is read as it is (to_python would
            # only count it); anything else takes the door's full walk.
            if type(value) is str and len(value) + 2 <= budget:
                args.append(value)
            else:
                args.append(door.to_python(value, what, budget, "the VM's memory limit"))
        return args

    def _box_answer(self, answer: tuple[bool, JsonValue]) -> Any:
        """The host's answer as the kernel takes it: {ok, value or message, limit kind}."""
        door = self._door
        ok, value = answer
        if not ok:
            return door.box_text(False, str(value))
        try:
            # A host answer of None is Lua's nil (``kv.get`` of a missing key); JSON nulls
            # inside a value are json.null.
            return door.box_text(True) if value is None else door.box(True, value)
        except DoorLimit as limit:
            return door.box_text(False, None, limit.kind)
        except ValueConversionError as error:
            return door.box_text(False, f"the host's answer cannot be given to Lua: {error}")

    def _kernel_part(self, name: str) -> tuple[bool | None, Any]:
        chunk = _KERNEL_PARTS.get(name)
        if chunk is None:
            return False, self._door.box_text(f"no kernel part {name!r}")
        return True, self._door.box_text(chunk)

    def _library_source(self, name: str) -> tuple[bool | None, Any]:
        # Asked the first time a template requires the library (the kernel asks only for the
        # names it was given): the source is compiled in the VM, then it is garbage.
        source = BUILTIN_LIBRARY_SOURCES.get(name)
        if source is None:
            return True, None
        return True, self._door.box_text(source)

    def _log_line(self, level: str, template: str, message: str) -> tuple[bool, Any]:
        try:
            self._log(level, template, message)
        except Exception:
            return False, self._door.box_text("the log is not available")
        return True, None

    # -- memory ---------------------------------------------------------------------------
    @property
    def memory_used(self) -> int:
        return int(self._runtime.get_memory_used())

    def collect_garbage(self) -> None:
        """A full collection (no template code runs in it: ``__gc`` is refused)."""
        self._kernel.collect()

    # -- templates ------------------------------------------------------------------------
    def compile(self, name: str, files: Mapping[str, str]) -> None:
        """Checks that every file compiles; raises TemplateError with file and line."""
        try:
            with self._door.lifted():
                lua_files = self._runtime.table_from(dict(files))
            problem = self._kernel.compile(lua_files)
            if problem is None:
                return
            message, file, line = problem
        except lua54.LuaMemoryError:
            raise TemplateError("memory limit exceeded while compiling", template=name,
                                file="init.lua") from None
        raise TemplateError(str(message), template=name, file=str(file),
                            line=int(line) if line is not None else None)

    def start_load(self, name: str, files: Mapping[str, str]) -> LuaRun:
        """Begins loading a template: compiling happened already; init.lua runs as a run."""
        self.compile(name, files)
        return LuaRun(self, template=name, event_name="(load)",
                      begin=lambda deadline: self._begin_load(name, files, deadline))

    def _begin_load(self, name: str, files: Mapping[str, str], deadline: float,
                    ) -> tuple[int | None, str, Any]:
        with self._door.lifted():
            box = self._runtime.table_from([name, self._runtime.table_from(dict(files))])
        run_id = int(self._kernel.start_load(box))
        status, value = self._kernel.step(run_id, deadline, None)
        return run_id, status, value

    def finish_load(self, name: str, result: HandlerResult) -> tuple[str, ...]:
        """Records a loaded template's subscriptions, or turns a failed load into TemplateError."""
        if not result.ok:
            file, line, message = _locate(result.error or "init.lua failed")
            raise TemplateError(message, template=name, file=file or "init.lua", line=line)
        events = tuple(str(event) for event in (result.value or []))  # type: ignore[union-attr]
        self._handlers[name] = frozenset(events)
        return events

    def drop(self, name: str) -> None:
        self._handlers.pop(name, None)
        self._kernel.drop_template(self._door.box_text(name))

    # -- handler runs ---------------------------------------------------------------------
    def handles(self, template: str, event_name: str) -> bool:
        """Whether ``template`` is loaded here with a handler for ``event_name``."""
        return event_name in self._handlers.get(template, ())

    def start_handler(self, template: str, version: int, event: Event) -> LuaRun | None:
        """A run of ``template``'s handler for ``event``; None when it has no such handler.

        Nothing runs yet: the event is converted and the handler started by the run's first
        step, on whatever thread steps it (a worker's Lua thread, under its watchdog).
        """
        if event.name not in self._handlers.get(template, ()):
            return None
        return LuaRun(self, template=template, event_name=event.name,
                      begin=lambda deadline: self._begin_handler(template, version, event,
                                                                 deadline))

    def _begin_handler(self, template: str, version: int, event: Event, deadline: float,
                       ) -> tuple[int | None, str, Any]:
        box = self._door.box_with(
            (template, version, event.name, event.id, event.at, event.author),
            event.data)
        run_id, status, value = self._kernel.begin_handler(box, deadline)
        if status == "missing":
            raise TemplateError(f"the template has no handler for {event.name}",
                                template=template)
        return int(run_id), str(status), value


def _parse_json_int(text: str) -> int | float:
    # Python refuses to parse integers over 4,300 digits; JSON numbers that long are floats.
    return int(text) if len(text) < 20 else float(text)


def _no_constant(name: str) -> float:
    raise ValueConversionError(f"{name} is not valid JSON (numbers must be finite)")


def _locate(message: str) -> tuple[str | None, int | None, str]:
    head, sep, rest = message.partition(": ")
    file, colon, line = head.rpartition(":")
    if sep and colon and file.endswith(".lua") and line.isdigit():
        return file, int(line), rest
    return None, None, message


class LuaRun:
    """One handler run: a Lua coroutine stepped until it needs the host or finishes.

    ``step`` runs Lua on the calling thread; the caller may move it to a worker thread so that
    a tenant burning CPU does not hold up others. CPU time is counted across steps, including
    the host's conversions, which run on the same thread.
    """

    __slots__ = ("_begin", "_id", "_vm", "cpu_used", "event_name", "finished", "now_answerer",
                 "template")

    def __init__(self, vm: TenantVM, *, template: str, event_name: str,
                 begin: Callable[[float], tuple[int | None, str, Any]]) -> None:
        self._vm = vm
        self._id: int | None = None
        # Starts the run and takes its first step, in one call into Lua: (id, status, value).
        self._begin = begin
        self.template = template
        self.event_name = event_name
        self.cpu_used = 0.0
        self.finished = False
        # Answers some host calls inside the step (the driver sets it); None: all yield.
        self.now_answerer: NowAnswerer | None = None

    def step(self, answer: tuple[bool, JsonValue] | None = None) -> HostRequest | HandlerResult:
        """Runs until the next host request (returned) or the end (a HandlerResult).

        ``answer`` is the host's reply to the previous request: (True, value) or
        (False, error message), which the template sees as a Lua error at its call.
        """
        vm = self._vm
        door = vm._door
        started = time.thread_time()
        vm._now = self.now_answerer
        try:
            deadline = started + vm.limits.cpu_seconds - self.cpu_used
            vm._step_budget = deadline - started
            if self._id is None:
                self._id, status, value = self._begin(deadline)
            else:
                lua_answer = self._box_answer(answer if answer is not None else (True, None))
                status, value = vm._kernel.step(self._id, deadline, lua_answer)
            while True:
                # Count the Lua time now: _interpret judges a finished run by it.
                now = time.thread_time()
                self.cpu_used += now - started
                started = now
                if status == "value":  # done with a number, a boolean or nil: nothing to fetch
                    return self._interpret("done", None, value)
                # The step answers its status only; the rest is fetched with the limit lifted.
                with door.lifted():
                    outcome = vm._kernel.outcome()
                    if status != "host":
                        return self._interpret(status, outcome, None)
                    request, lua_answer = self._read_request(outcome)
                if request is not None:
                    return request
                deadline = started + vm.limits.cpu_seconds - self.cpu_used
                vm._step_budget = deadline - started
                status, value = vm._kernel.step(self._id, deadline, lua_answer)
        except DoorLimit as limit:
            return self._fail_limit(limit.kind, None, None)
        except lua54.LuaMemoryError:
            return self._fail_limit("memory", None, None)
        except TemplateError as error:
            return self._fail(error.message, None)
        except ValueConversionError as error:
            # Only the event can be refused here: answers and arguments are handled above.
            return self._fail(f"the event's data cannot be given to Lua: {error}", None)
        except lua54.LuaError:
            # Only the kernel's own code raises here, for example when memory ran out in it.
            return self._fail_limit("memory", None, None)
        finally:
            vm._now = None
            if vm._alarm is not None:
                vm._alarm.leave()
            self.cpu_used += time.thread_time() - started

    def _box_answer(self, answer: tuple[bool, JsonValue]) -> Any:
        return self._vm._box_answer(answer)

    def _read_request(self, outcome: Any) -> tuple[HostRequest | None, Any]:
        """The host request of ``outcome``, or (None, the answer to give the template)."""
        vm = self._vm
        family, op, packed = outcome["family"], outcome["op"], outcome["args"]
        try:
            args = vm._read_arguments(packed)
        except ValueConversionError as error:
            # The template passed something JSON cannot hold: answer at its own line.
            return None, vm._door.box_text(False, str(error))
        return HostRequest(str(family), str(op), args), None

    def cancel(self) -> None:
        if not self.finished and self._id is not None:
            self._vm._kernel.cancel(self._id)
        self.finished = True

    def _interpret(self, status: str, outcome: Any, value: Any) -> HandlerResult:
        """The result of a finished step: ``value`` is the scalar a "value" status gave,
        else it is read from ``outcome``."""
        limits = self._vm.limits
        if status == "done" and self.cpu_used > limits.cpu_seconds:
            # It finished inside one C call (no hook tick came after the limit): still over.
            return self._fail_limit("cpu", None, None)
        if status == "done":
            try:
                door = self._vm._door
                if outcome is not None:
                    value = door.item(outcome, "value", "the handler's return value")
                value = door.to_python(value, "the handler's return value",
                                       limits.result_bytes, "the result limit")
            except ValueConversionError as error:
                return self._fail(str(error), None)
            self.finished = True
            return HandlerResult(self.template, True, value)
        if status == "limit":
            return self._fail_limit(str(outcome["kind"]), outcome["message"],
                                    outcome["traceback"])
        return self._fail(str(outcome["message"]), outcome["traceback"])

    def _fail(self, message: str, traceback: object) -> HandlerResult:
        self.finished = True
        return HandlerResult(self.template, False, error=message,
                             traceback=str(traceback) if traceback is not None else None)

    def _fail_limit(self, kind: str, message: object, traceback: object) -> HandlerResult:
        self.finished = True
        if kind == "memory":
            self._vm.broken = "memory"
        text = str(message) if message is not None else _LIMIT_MESSAGES.get(
            kind, f"{kind} limit exceeded")
        return HandlerResult(self.template, False, error=text,
                             traceback=str(traceback) if traceback is not None else None,
                             limit=kind)
