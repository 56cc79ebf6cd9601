"""``moonshard dev``: a template folder running locally, reloaded on save, driven from a
prompt or from its sample payloads, with a recording Discord and a real or fast clock."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import click

from moonshard.cli.exec_cmd import LogPrinter, local_options, read_template_dir
from moonshard.errors import LimitExceeded, TemplateError
from moonshard.events import Event
from moonshard.limits import Limits
from moonshard.localrun import EventReport, LocalClock, LocalSession
from moonshard.sandbox.watchdog import StepWatchdog
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["dev"]

# How often the folder is looked at for saves, and the real clock for due timers.
_POLL_SECONDS = 0.25
_HELP = """commands:
  EVENT_NAME                 run an event; its data from events/EVENT_NAME.json if there is one
  EVENT_NAME {json}          run an event with this data
  EVENT_NAME @file.json      run an event with the data in a file
  :events                    list the sample payloads in events/
  :timers                    list the pending timers (scheduled events, key expiries)
  :help                      this
  :quit                      stop (so does end of input)"""


def _author_of(data: JsonValue) -> str | None:
    """The user a payload is from, as the gateway finds it: the message author, the
    interacting member or user."""
    for path in (("author", "id"), ("member", "user", "id"), ("user", "id")):
        value: JsonValue = data
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str) and value.isdigit():
            return value
    return None


def _mtimes(directory: Path) -> dict[str, float]:
    stamps: dict[str, float] = {}
    for path in directory.rglob("*.lua"):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        try:
            stamps[path.as_posix()] = path.stat().st_mtime_ns / 1e9
        except OSError:
            continue  # removed while we looked: the next look sees it gone
    return stamps


class _Out:
    """What dev prints: one event's run, the way an author reads it."""

    @staticmethod
    def line(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def report(self, report: EventReport) -> None:
        cause = "" if report.cause == "event" else f" ({report.cause})"
        self.line(f"-> {report.event.name}{cause}")
        if not report.results:
            self.line("   no handler ran")
        for result in report.results:
            if result.ok:
                self.line(f"   ok {result.template}: "
                          f"{json.dumps(result.value, ensure_ascii=False)}")
            else:
                # Its traceback is in the log line printed above, as the tenant log has it.
                self.line(f"   FAILED {result.template}: {result.error}")
        for call in report.discord:
            body = f" {json.dumps(call.body, ensure_ascii=False)}" if call.body is not None \
                else ""
            reason = f" (reason: {call.reason})" if call.reason is not None else ""
            self.line(f"   discord (not sent): {call.method} {call.path}{body}{reason}")


class _Dev:
    """The running dev loop: one session, a watcher, a clock and the prompt's lines."""

    def __init__(self, directory: Path, session: LocalSession, name: str) -> None:
        self._directory = directory
        self._session = session
        self._name = name
        self._out = _Out()
        self._lock = asyncio.Lock()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._stamps = _mtimes(directory)
        session.on_report = self._out.report

    def _refusal(self, error: TemplateError | LimitExceeded) -> str:
        return f"{self._name}: {error}"

    async def load(self, *, first: bool) -> bool:
        files = read_template_dir(self._directory)
        try:
            template = await self._session.load(self._name, files)
        except (TemplateError, LimitExceeded) as error:
            if first:
                self._out.line(f"error: {self._refusal(error)}")
                self._out.line("fix it and save: dev reloads the folder on every save")
            else:
                self._out.line(f"reload refused: {self._refusal(error)}")
                self._out.line("   the previous version keeps running")
            return False
        verb = "loaded" if first else "reloaded"
        self._out.line(f"{verb} {self._name} (v{template.version}); handles: "
                       f"{', '.join(template.events) or 'nothing'}")
        return True

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(self._lines.put_nowait, line)
        loop.call_soon_threadsafe(self._lines.put_nowait, None)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            stamps = _mtimes(self._directory)
            if stamps == self._stamps:
                continue
            self._stamps = stamps
            async with self._lock:
                await self.load(first=self._session.template is None)

    async def tick(self) -> None:
        """The real clock: fires timers as they come due."""
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            async with self._lock:
                if self._session.template is None:
                    continue
                await self._session.run_timers()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_stdin, args=(loop,), daemon=True).start()
        tasks = [asyncio.create_task(self.watch())]
        if not self._session.clock.fast:
            tasks.append(asyncio.create_task(self.tick()))
        try:
            while (line := await self._lines.get()) is not None:
                if not await self.command(line.strip()):
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def command(self, line: str) -> bool:
        """Runs one prompt line; False to stop."""
        if not line or line.startswith("#"):
            return True
        if line in (":quit", ":q", ":exit"):
            return False
        if line == ":help":
            self._out.line(_HELP)
        elif line == ":events":
            samples = sorted(path.stem for path in (self._directory / "events").glob("*.json"))
            self._out.line("samples: " + (", ".join(samples) or "none (add events/NAME.json)"))
        elif line == ":timers":
            async with self._lock:
                timers = await self._session.pending_timers()
            now = self._session.clock.now()
            for timer in timers:
                what = f"{timer.scope}/{timer.key}" if timer.kind == "expiry" else timer.key
                self._out.line(f"   {timer.kind} {what} in {max(0.0, timer.due - now):.1f} s")
            if not timers:
                self._out.line("   no pending timers")
        elif line.startswith(":"):
            self._out.line(f"unknown command {line.split(maxsplit=1)[0]}; :help lists them")
        else:
            await self.run_line(line)
        return True

    def _event_of(self, line: str) -> Event | None:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        try:
            if not rest:
                sample = self._directory / "events" / f"{name}.json"
                text = sample.read_text(encoding="utf-8") if sample.is_file() else "{}"
            elif rest.startswith("@"):
                path = Path(rest[1:])
                if not path.is_absolute() and not path.exists():
                    path = self._directory / path
                text = path.read_text(encoding="utf-8")
            else:
                text = rest
            data: JsonValue = json.loads(text)
            return Event(name, data, author=_author_of(data))
        except OSError as error:
            self._out.line(f"error: cannot read {rest[1:]}: {error.strerror}")
        except json.JSONDecodeError as error:
            self._out.line(f"error: the event data is not valid JSON: {error}")
        except ValueError as error:
            self._out.line(f"error: {error}")
        return None

    async def run_line(self, line: str) -> None:
        event = self._event_of(line)
        if event is None:
            return
        async with self._lock:
            template = self._session.template
            if template is None:
                self._out.line("error: no version of the template loaded yet; fix it and save")
                return
            report = await self._session.run(event, until_idle=self._session.clock.fast)
            if not report.handled:
                self._out.line(f"   (this template handles: "
                               f"{', '.join(report.subscriptions) or 'nothing'})")
            if report.pending:
                self._out.line(f"   {report.pending} timer(s) pending")


@click.command("dev")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tenant", "tenant_text", default="guild:1", show_default=True,
              help="The tenant: guild:<id> or user:<id>.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path),
              help="An SQLite file that keeps ctx.kv and timers (default: a throwaway store).")
@click.option("--clock", type=click.Choice(["real", "fast"]), default="real",
              show_default=True,
              help="real: timers fire when due; fast: every emitted, scheduled and expiring "
                   "event runs at once, the clock jumping ahead to it.")
@click.option("--memory", default="25MiB", show_default=True, help="VM memory limit.")
@click.option("--cpu", type=float, default=10.0, show_default=True,
              help="CPU seconds per handler run.")
def dev(directory: Path, tenant_text: str, state: Path | None, clock: str, memory: str,
        cpu: float) -> None:
    """Run the template in DIRECTORY locally; reload it on every save; read events from the
    prompt (EVENT_NAME [json or @file]; :help lists the rest)."""
    tenant, limits = local_options(tenant_text, memory, cpu)
    name = directory.resolve().name
    if not name or not name[0].isalnum():
        name = "template"

    def on_stuck(seconds: float, label: str) -> None:
        # Stuck in C code: the only sure stop is the end of this process.
        click.echo(f"error: {name}: handler killed after {seconds:.1f} s of wall-clock time "
                   "(stuck in C code, such as a pattern match); dev stops", err=True)
        sys.stderr.flush()
        os._exit(1)

    with tempfile.TemporaryDirectory(prefix="moonshard-dev-") as scratch:
        database = state.resolve() if state else Path(scratch) / "kv.db"
        with StepWatchdog(limits.hard_wall_seconds, on_stuck) as watchdog:
            asyncio.run(_main(directory, name, tenant, limits, f"sqlite:///{database}",
                              LocalClock(fast=clock == "fast"), watchdog))


async def _main(directory: Path, name: str, tenant: TenantId, limits: Limits, url: str,
                clock: LocalClock, watchdog: StepWatchdog) -> None:
    printer = LogPrinter(stderr=False)
    async with LocalSession(tenant, limits, url, printer, watchdog.run_step, clock) as session:
        loop = _Dev(directory, session, name)
        mode = "fast" if clock.fast else "real"
        _Out.line(f"moonshard dev: {directory} as {tenant}, clock {mode}; :help for commands")
        await loop.load(first=True)
        await loop.serve()
