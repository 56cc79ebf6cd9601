"""One tenant VM: a restricted Lua 5.4 state holding that tenant's loaded templates."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from lupa import lua54

from moonshard.errors import TemplateError, ValueConversionError
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.sandbox.convert import ValueBridge
from moonshard.sandbox.libraries import BUILTIN_LIBRARY_SOURCES
from moonshard.tenants import TenantId
from moonshard.values import JsonValue, dumps_json

__all__ = ["HostRequest", "LogSink", "LuaRun", "TenantVM"]

# Instructions between two checks of the CPU clock (the hook itself costs little per tick).
_HOOK_COUNT = 1000

LogSink = Callable[[str, str, str], None]
"""Receives (level, template, message) for every print and ctx.log of a template."""


def _deny_attribute(obj: object, name: object, is_setting: bool) -> object:
    # Defence in depth: no Python attribute is ever reachable from Lua, even by accident.
    raise AttributeError("Python attributes are not reachable from templates")


def _prelude_source() -> str:
    return (importlib.resources.files("moonshard.sandbox") / "lua" / "prelude.lua").read_text()


@dataclasses.dataclass(frozen=True, slots=True)
class HostRequest:
    """A template's call that the host must answer (``family.op(*args)``)."""

    family: str
    op: str
    args: list[JsonValue]


class TenantVM:
    """The Lua state of one tenant. Used by one thread at a time; never shared between tenants.

    ``broken`` names the limit that made the VM unusable (``"memory"`` or ``"wall"``); a broken
    VM must be discarded and rebuilt.
    """

    __slots__ = (
        "_bridge",
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
        self._runtime = lua54.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True,
            attribute_filter=_deny_attribute, max_memory=limits.memory_bytes,
        )
        bridge = self._runtime.table_from({
            "clock": time.thread_time,
            "json_encode": self._json_encode,
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
            "libraries": self._runtime.table_from(dict(BUILTIN_LIBRARY_SOURCES)),
        })
        self._kernel = self._runtime.execute(_prelude_source(), bridge, config)
        self._bridge = ValueBridge(self._runtime, self._kernel)

    # -- the bridge functions templates reach through closures -----------------------------
    def _json_encode(self, value: Any) -> str:
        return dumps_json(self._bridge.to_python(value, "json.encode"))

    def _json_decode(self, text: str) -> Any:
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueConversionError(
                f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
        except RecursionError:
            raise ValueConversionError("JSON nests too deeply") from None
        return self._bridge.to_lua(decoded)

    def _log_line(self, level: str, template: str, message: str) -> None:
        self._log(level, template, message)

    # -- memory ---------------------------------------------------------------------------
    @property
    def memory_used(self) -> int:
        return int(self._runtime.get_memory_used())

    # -- templates ------------------------------------------------------------------------
    def compile(self, name: str, files: Mapping[str, str]) -> None:
        """Checks that every file compiles; raises TemplateError with file and line."""
        lua_files = self._runtime.table_from(dict(files))
        problem = self._kernel.compile(lua_files)
        if problem is not None:
            raise TemplateError(str(problem["message"]), template=name, file=problem["file"],
                                line=problem["line"])

    def start_load(self, name: str, files: Mapping[str, str]) -> LuaRun:
        """Begins loading a template: compiling happened already; init.lua runs as a run."""
        self.compile(name, files)
        run_id = self._kernel.start_load(name, self._runtime.table_from(dict(files)))
        return LuaRun(self, run_id, template=name, event_name="(load)")

    def finish_load(self, name: str, result: HandlerResult) -> tuple[str, ...]:
        """Records a loaded template's subscriptions, or turns a failed load into TemplateError."""
        if not result.ok:
            file, line, message = _locate(result.error or "init.lua failed")
            raise TemplateError(message, template=name, file=file or "init.lua", line=line)
        return tuple(str(name) for name in (result.value or []))  # type: ignore[union-attr]

    def drop(self, name: str) -> None:
        self._kernel.drop_template(name)

    # -- handler runs ---------------------------------------------------------------------
    def start_handler(self, template: str, version: int, event: Event) -> LuaRun | None:
        """Starts ``template``'s handler for ``event``; None when it has no such handler."""
        data = self._bridge.to_lua(event.data if event.data is not None else {})
        run_id = self._kernel.start_handler(template, version, event.name, event.id, event.at,
                                            event.author, data)
        if run_id is None:
            return None
        return LuaRun(self, run_id, template=template, event_name=event.name)


def _locate(message: str) -> tuple[str | None, int | None, str]:
    head, sep, rest = message.partition(": ")
    file, colon, line = head.rpartition(":")
    if sep and colon and file.endswith(".lua") and line.isdigit():
        return file, int(line), rest
    return None, None, message


class LuaRun:
    """One handler run: a Lua coroutine stepped until it needs the host or finishes.

    ``step`` runs Lua on the calling thread; the caller may move it to a worker thread so that
    a tenant burning CPU does not hold up others. CPU time is counted across steps.
    """

    __slots__ = ("_id", "_vm", "cpu_used", "event_name", "finished", "template")

    def __init__(self, vm: TenantVM, run_id: int, *, template: str, event_name: str) -> None:
        self._vm = vm
        self._id = run_id
        self.template = template
        self.event_name = event_name
        self.cpu_used = 0.0
        self.finished = False

    def step(self, answer: tuple[bool, JsonValue] | None = None) -> HostRequest | HandlerResult:
        """Runs until the next host request (returned) or the end (a HandlerResult).

        ``answer`` is the host's reply to the previous request: (True, value) or
        (False, error message), which the template sees as a Lua error at its call.
        """
        while True:
            outcome = self._resume(answer if answer is not None else (True, None))
            if isinstance(outcome, HandlerResult):
                return outcome
            status = outcome["status"]
            if status != "host":
                return self._interpret(outcome)
            try:
                packed = outcome["args"]
                args = [self._vm._bridge.to_python(packed[index], f"argument #{index}")
                        for index in range(1, int(packed["n"]) + 1)]
            except ValueConversionError as error:
                # The template passed something JSON cannot hold: answer at its own line.
                answer = (False, str(error))
                continue
            except UnicodeDecodeError:
                answer = (False, "an argument is a string that is not valid UTF-8")
                continue
            return HostRequest(str(outcome["family"]), str(outcome["op"]), args)

    def _resume(self, answer: tuple[bool, JsonValue]) -> Any:
        vm = self._vm
        started = time.thread_time()
        ok, value = answer
        try:
            # A host answer of None is Lua's nil (``kv.get`` of a missing key); JSON nulls
            # inside a value are json.null.
            lua_answer = (None if value is None else vm._bridge.to_lua(value)) if ok \
                else str(value)
            deadline = started + vm.limits.cpu_seconds - self.cpu_used
            return vm._kernel.step(self._id, deadline, ok, lua_answer)
        except lua54.LuaMemoryError:
            return self._fail_limit("memory", None)
        except lua54.LuaError as error:
            # Only the kernel's own code raises here, for example when memory ran out in it.
            if "memory" in str(error):
                return self._fail_limit("memory", None)
            return self._fail(f"internal sandbox error: {error}", None)
        finally:
            self.cpu_used += time.thread_time() - started

    def cancel(self) -> None:
        if not self.finished:
            self._vm._kernel.cancel(self._id)
            self.finished = True

    def _interpret(self, outcome: Any) -> HandlerResult:
        status = outcome["status"]
        if status == "done" and self.cpu_used > self._vm.limits.cpu_seconds:
            # It finished inside one C call (no hook tick came after the limit): still over.
            return self._fail_limit("cpu", None)
        if status == "done":
            try:
                value = self._vm._bridge.to_python(outcome["value"], "the handler's return value")
            except ValueConversionError as error:
                return self._fail(str(error), None)
            except UnicodeDecodeError:
                return self._fail("the handler's return value: a string is not valid UTF-8", None)
            self.finished = True
            return HandlerResult(self.template, True, value)
        if status == "limit":
            return self._fail_limit(str(outcome["kind"]), outcome["traceback"])
        return self._fail(str(outcome["message"]), outcome["traceback"])

    def _fail(self, message: str, traceback: str | None) -> HandlerResult:
        self.finished = True
        return HandlerResult(self.template, False, error=message,
                             traceback=str(traceback) if traceback is not None else None)

    def _fail_limit(self, kind: str, traceback: str | None) -> HandlerResult:
        self.finished = True
        if kind == "memory":
            self._vm.broken = "memory"
        message = {"memory": "memory limit exceeded", "cpu": "cpu time limit exceeded"}.get(
            kind, f"{kind} limit exceeded")
        return HandlerResult(self.template, False, error=message,
                             traceback=str(traceback) if traceback is not None else None,
                             limit=kind)

