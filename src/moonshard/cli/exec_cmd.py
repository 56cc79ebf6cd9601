"""``moonshard exec``: run a template folder against one event in a fresh sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from types import MappingProxyType

import click
from rich.console import Console
from rich.text import Text

from moonshard.errors import LimitExceeded, TemplateError
from moonshard.events import Event
from moonshard.limits import Limits, parse_size
from moonshard.localrun import LocalClock, LocalRunner, RunReport
from moonshard.sandbox.watchdog import StepWatchdog
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["LogPrinter", "exec_template", "local_options", "read_template_dir",
           "template_error_json"]

_LEVEL_STYLES = MappingProxyType(
    {"debug": "dim", "info": "cyan", "warn": "yellow", "error": "bold red"})


def read_template_dir(directory: Path) -> dict[str, str]:
    """Every ``.lua`` file below ``directory``, keyed by its path relative to it.

    Hidden files and folders (``.types/`` of the editor definitions, ``.git/``) are left out.
    """
    files: dict[str, str] = {}
    for path in sorted(directory.rglob("*.lua")):
        parts = path.relative_to(directory).parts
        if any(part.startswith(".") for part in parts):
            continue
        relative = path.relative_to(directory).as_posix()
        try:
            files[relative] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise click.UsageError(f"{path}: not UTF-8 text") from None
    return files


def _parse_data(text: str | None) -> JsonValue:
    if text is None:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise click.BadParameter(f"cannot read {text[1:]}: {error.strerror}",
                                     param_hint="--data") from None
    try:
        value: JsonValue = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON: {error}", param_hint="--data") from None
    return value


class LogPrinter:
    """Prints a template's log lines to stderr as they happen (or, with ``keep``, keeps them
    for the JSON document of ``--json``)."""

    __slots__ = ("_console", "keep", "kept")

    def __init__(self, *, keep: bool = False, stderr: bool = True) -> None:
        self._console = Console(stderr=stderr, highlight=False, soft_wrap=True)
        self.keep = keep
        self.kept: list[JsonValue] = []

    def __call__(self, level: str, template: str, message: str) -> None:
        if self.keep:
            self.kept.append({"level": level, "template": template, "message": message})
            return
        line = Text()
        line.append(f"[{level}] ", style=_LEVEL_STYLES.get(level, ""))
        line.append(f"{template}: ", style="bold")
        line.append(message)
        self._console.print(line)


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()



def local_options(tenant_text: str, memory: str, cpu: float) -> tuple[TenantId, Limits]:
    """``--tenant``, ``--memory`` and ``--cpu`` of the local commands (exec, dev), checked."""
    try:
        tenant = TenantId.parse(tenant_text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--tenant") from None
    try:
        limits = Limits(memory_bytes=parse_size(memory), cpu_seconds=cpu)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--memory") from None
    if not cpu > 0:
        raise click.BadParameter("must be a positive number of seconds", param_hint="--cpu")
    return tenant, limits

@click.command("exec")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--event", "event_name", required=True, help="Event name, e.g. MESSAGE_CREATE.")
@click.option("--data", "data_text", help="Event data as JSON, or @file to read it from a file.")
@click.option("--author", help="The user snowflake the event is from.")
@click.option("--tenant", "tenant_text", default="guild:1", show_default=True,
              help="The tenant: guild:<id> or user:<id>.")
@click.option("--memory", default="25MiB", show_default=True, help="VM memory limit.")
@click.option("--cpu", type=float, default=10.0, show_default=True,
              help="CPU seconds per handler run.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path),
              help="An SQLite file that keeps ctx.kv between runs (default: a throwaway store).")
@click.option("--until-idle", is_flag=True,
              help="Also run what the event scheduled or armed (scheduled events, key "
                   "expiries), on a fast-forwarded clock, until nothing is pending.")
@click.option("--max-events", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="The bound on events one exec runs (emitted, scheduled, expiries).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine output: one JSON document on stdout, with the log lines in it, "
                   "and nothing on stderr.")
def exec_template(
    directory: Path, event_name: str, data_text: str | None, author: str | None,
    tenant_text: str, memory: str, cpu: float, state: Path | None, until_idle: bool,
    max_events: int, as_json: bool,
) -> None:
    """Run the template in DIRECTORY against one event and print the results as JSON.

    Exit status: 0 when every handler succeeded, 1 when one failed, 2 on a usage error.
    """
    tenant, limits = local_options(tenant_text, memory, cpu)
    try:
        event = Event(event_name, _parse_data(data_text), author=author)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    files = read_template_dir(directory)
    name = directory.resolve().name
    if not name or not name[0].isalnum():
        name = "template"

    def on_stuck(seconds: float, label: str) -> None:
        # The Lua call is stuck in C code: report it and end this process, the only sure stop.
        _print_json({"tenant": str(tenant), "event": {"name": event.name, "id": event.id},
                     "results": [{"template": name, "ok": False, "error": (
                         f"wall-clock limit exceeded: one call ran {seconds:.1f} s without "
                         "returning (stuck in C code, such as a pattern match); the VM was "
                         "killed")}]})
        if not as_json:
            click.echo(f"error: {name}: handler killed after {seconds:.1f} s of wall-clock "
                       "time", err=True)
        sys.stderr.flush()
        os._exit(1)

    with tempfile.TemporaryDirectory(prefix="moonshard-exec-") as scratch:
        database = state.resolve() if state else Path(scratch) / "kv.db"
        printer = LogPrinter(keep=as_json)
        with StepWatchdog(limits.hard_wall_seconds, on_stuck) as watchdog:
            runner = LocalRunner(tenant, limits, f"sqlite:///{database}", printer,
                                 watchdog.run_step, LocalClock(fast=until_idle))
            try:
                report = asyncio.run(runner.run(name, files, event, until_idle=until_idle,
                                                max_events=max_events))
            except (TemplateError, LimitExceeded) as error:
                _print_template_error(name, error, printer.kept if as_json else None)
                sys.exit(1)
    _print_report(tenant, report, printer.kept if as_json else None)
    sys.exit(0 if report.ok else 1)


def template_error_json(name: str, error: TemplateError | LimitExceeded) -> dict[str, JsonValue]:
    """A refused template as the API words it (its name always in it)."""
    if isinstance(error, TemplateError):
        return {"code": error.code, "template": error.template or name, "file": error.file,
                "line": error.line, "message": error.message}
    return {"code": "limit_exceeded", "template": name, "limit": error.limit,
            "message": str(error)}


def _print_template_error(name: str, error: TemplateError | LimitExceeded,
                          logs: list[JsonValue] | None) -> None:
    body = template_error_json(name, error)
    if logs is not None:
        _print_json({"error": body, "logs": logs})
        return
    _print_json({"error": body})
    click.echo(f"error: {name}: {error}", err=True)


def _print_report(tenant: TenantId, report: RunReport, logs: list[JsonValue] | None) -> None:
    document: dict[str, JsonValue] = {"tenant": str(tenant), **report.to_json()}
    if logs is not None:
        document["logs"] = logs
        document["handled"] = report.handled
        document["subscriptions"] = list(report.subscriptions)
        _print_json(document)
        return
    _print_json(document)
    calls = [*(call for before in report.before for call in before.discord), *report.discord,
             *(call for emitted in report.emitted for call in emitted.discord)]
    for call in calls:
        reason = f" (reason: {call.reason})" if call.reason is not None else ""
        click.echo(f"discord (recorded, not sent): {call.method} {call.path}{reason}", err=True)
    if not report.handled:
        click.echo(
            f"warning: no handler for {report.event.name}; this template handles: "
            f"{', '.join(report.subscriptions) or 'nothing'}", err=True)
    if report.pending:
        click.echo(f"note: {report.pending} timer(s) still pending (scheduled events, key "
                   "expiries); --until-idle runs them on a fast clock", err=True)
