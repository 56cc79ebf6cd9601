"""One tenant VM: a restricted Lua 5.4 state holding that tenant's loaded templates."""

from __future__ import annotations

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
from moonshard.sandbox.libraries import BUILTIN_LIBRARY_SOURCES
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["HostRequest", "LogSink", "LuaRun", "TenantVM"]

# Instructions between two checks of the CPU clock (the hook itself costs little per tick).
_HOOK_COUNT = 1000
# How the host talks about a broken limit (the kernel prefixes the template's file and line).
_LIMIT_MESSAGES = MappingProxyType({
    "memory": "memory limit exceeded", "cpu": "cpu time limit exceeded"})

LogSink = Callable[[str, str, str], None]
"""Receives (level, template, message) for every print and ctx.log of a template."""


def _deny_attribute(obj: object, name: object, is_setting: bool) -> object:
    # Defence in depth: no Python attribute is ever reachable from Lua, even by accident.
    raise AttributeError("Python attributes are not reachable from templates")


# Read once: every VM runs it, and reading the file again was a tenth of a VM's build.
_PRELUDE_SOURCE = (
    importlib.resources.files("moonshard.sandbox") / "lua" / "prelude.lua").read_text()


@dataclasses.dataclass(frozen=True, slots=True)
class HostRequest:
    """A template's call that the host must answer (``family.op(*args)``)."""

    family: str
    op: str
    args: list[JsonValue]


class TenantVM:
    """The Lua state of one tenant. Used by one thread at a time; never shared between tenants.

    ``broken`` names the limit that made the VM unusable (``"memory"`` or ``"wall"``); a broken
    VM must be discarded and rebuilt. Every value that crosses between this VM and the host
    goes through its ``ValueDoor``; every call into Lua is handed only numbers, booleans and
    tables the door built, so nothing allocates in Lua outside a protected call.
    """

    __slots__ = (
        "_door",
        "_handlers",
        "_kernel",
        "_log",
        "_runtime",
        "broken",
        "limits",
        "tenant",
    )

    def __init__(self, tenant: TenantId, limits: Limits, log: LogSink) -> None:
        self.tenant = tenant
        self.limits = limits
        self.broken: str | None = None
        self._log = log
        # template name -> the events it handles, as its init.lua returned them
        self._handlers: dict[str, frozenset[str]] = {}
        self._runtime = lua54.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True,
            attribute_filter=_deny_attribute, max_memory=limits.memory_bytes,
        )
        bridge = self._runtime.table_from({
            "clock": time.thread_time,
            "json_decode": self._json_decode,
            "log": self._log_line,
        })
        config = self._runtime.table_from({
            "tenant_kind": tenant.kind,
            "tenant_id": tenant.id,
            "hook_count": _HOOK_COUNT,
            "pattern_steps": limits.pattern_steps,
            "log_line_bytes": limits.log_line_bytes,
            "log_lines_per_run": limits.log_lines_per_run,
            "load_bytes": limits.template_source_bytes,
            "json_encode_bytes": limits.memory_bytes,
            "json_max_depth": MAX_DEPTH,
            "libraries": self._runtime.table_from(dict(BUILTIN_LIBRARY_SOURCES)),
        })
        self._kernel = self._runtime.execute(_PRELUDE_SOURCE, bridge, config)
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
                      start=lambda: self._start_load(name, files))

    def _start_load(self, name: str, files: Mapping[str, str]) -> int:
        with self._door.lifted():
            box = self._runtime.table_from([name, self._runtime.table_from(dict(files))])
        return int(self._kernel.start_load(box))

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
                      start=lambda: self._start_handler(template, version, event))

    def _start_handler(self, template: str, version: int, event: Event) -> int:
        box = self._door.box(template, version, event.name, event.id, event.at, event.author,
                             event.data if event.data is not None else {})
        run_id = self._kernel.start_handler(box)
        if run_id is None:
            raise TemplateError(f"the template has no handler for {event.name}",
                                template=template)
        return int(run_id)


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

    __slots__ = ("_id", "_start", "_vm", "cpu_used", "event_name", "finished", "template")

    def __init__(self, vm: TenantVM, *, template: str, event_name: str,
                 start: Callable[[], int]) -> None:
        self._vm = vm
        self._id: int | None = None
        self._start = start
        self.template = template
        self.event_name = event_name
        self.cpu_used = 0.0
        self.finished = False

    def step(self, answer: tuple[bool, JsonValue] | None = None) -> HostRequest | HandlerResult:
        """Runs until the next host request (returned) or the end (a HandlerResult).

        ``answer`` is the host's reply to the previous request: (True, value) or
        (False, error message), which the template sees as a Lua error at its call.
        """
        vm = self._vm
        door = vm._door
        started = time.thread_time()
        try:
            if self._id is None:
                self._id = self._start()
                lua_answer = None
            else:
                lua_answer = self._box_answer(answer if answer is not None else (True, None))
            while True:
                deadline = started + vm.limits.cpu_seconds - self.cpu_used
                # The step answers its status only; the rest is fetched with the limit lifted.
                status = str(vm._kernel.step(self._id, deadline, lua_answer))
                # Count the Lua time now: _interpret judges a finished run by it.
                now = time.thread_time()
                self.cpu_used += now - started
                started = now
                with door.lifted():
                    outcome = vm._kernel.outcome()
                    if status != "host":
                        return self._interpret(status, outcome)
                    request, lua_answer = self._read_request(outcome)
                if request is not None:
                    return request
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
            self.cpu_used += time.thread_time() - started

    def _box_answer(self, answer: tuple[bool, JsonValue]) -> Any:
        door = self._vm._door
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

    def _read_request(self, outcome: Any) -> tuple[HostRequest | None, Any]:
        """The host request of ``outcome``, or (None, the answer to give the template)."""
        door = self._vm._door
        family, op, packed = outcome["family"], outcome["op"], outcome["args"]
        try:
            count = int(packed["n"])
            args = [self._read_argument(packed, index) for index in range(1, count + 1)]
        except ValueConversionError as error:
            # The template passed something JSON cannot hold: answer at its own line.
            return None, door.box_text(False, str(error))
        return HostRequest(str(family), str(op), args), None

    def _read_argument(self, packed: Any, index: int) -> JsonValue:
        door, what = self._vm._door, f"argument #{index}"
        return door.to_python(door.item(packed, index, what), what,
                              self._vm.limits.memory_bytes, "the VM's memory limit")

    def cancel(self) -> None:
        if not self.finished and self._id is not None:
            self._vm._kernel.cancel(self._id)
        self.finished = True

    def _interpret(self, status: str, outcome: Any) -> HandlerResult:
        limits = self._vm.limits
        if status == "done" and self.cpu_used > limits.cpu_seconds:
            # It finished inside one C call (no hook tick came after the limit): still over.
            return self._fail_limit("cpu", None, None)
        if status == "done":
            try:
                door = self._vm._door
                value = door.to_python(
                    door.item(outcome, "value", "the handler's return value"),
                    "the handler's return value",
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
