"""``moonshard bench``: run the benchmark suites, print a table, write JSON."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import click
from rich.console import Console

from moonshard.bench.measure import Figure
from moonshard.bench.noise import OtherCpu
from moonshard.bench.partial import PartialRun
from moonshard.cli.output import Printer

__all__ = ["SUITES", "bench", "machine", "run_suite"]


def _sandbox(quick: bool, database_url: str | None) -> list[Figure]:
    from moonshard.bench.sandbox_bench import run_sandbox_bench  # noqa: PLC0415 - lazy suites

    return run_sandbox_bench(quick)


def _store(quick: bool, database_url: str | None) -> list[Figure]:
    from moonshard.bench.store_suite import run_store_suite  # noqa: PLC0415 - lazy suites

    return run_store_suite(quick, database_url)


def _workers(quick: bool, database_url: str | None) -> list[Figure]:
    from moonshard.bench.workers_bench import run_workers_bench  # noqa: PLC0415 - lazy suites

    return run_workers_bench(quick)


def _timers(quick: bool, database_url: str | None) -> list[Figure]:
    from moonshard.bench.timers_bench import run_timers_bench  # noqa: PLC0415 - lazy suites

    return run_timers_bench(quick)


SUITES: MappingProxyType[str, Callable[[bool, str | None], list[Figure]]] = MappingProxyType({
    "sandbox": _sandbox, "store": _store, "workers": _workers, "timers": _timers})
"""Each suite by name: ``run(quick, database_url)`` gives its figures."""


def run_suite(name: str, quick: bool, database_url: str | None = None) -> list[Figure]:
    """The figures of one suite; raises ``KeyError`` for an unknown name."""
    with _quiet_logs():
        return SUITES[name](quick, database_url)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The benchmarks crash workers on purpose: their warnings would only cover the table."""
    logger = logging.getLogger("moonshard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def machine() -> dict[str, object]:
    """What the figures were measured on, read from this machine."""
    from lupa import lua54  # noqa: PLC0415 - only for its version

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory: int | None = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    major, minor = lua54.LuaRuntime().lua_version
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory,
            "python": sys.version.split()[0], "lupa": _version("lupa"),
            "lua": f"{major}.{minor}", "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform()}


def _version(package: str) -> str | None:
    from importlib import metadata  # noqa: PLC0415 - only here

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _command(suites: tuple[str, ...], quick: bool, database_url: str | None) -> str:
    """The command line that reproduces the run; a database URL shows only its scheme (the
    rest may hold a password)."""
    parts = ["moonshard", "bench", *(f"--suite {suite}" for suite in suites)]
    if quick:
        parts.append("--quick")
    if database_url is not None:
        parts.append(f"--database-url {database_url.partition(':')[0]}://...")
    return " ".join(parts)


_COLUMNS = ("suite", "figure", "value", "baseline", "baseline is", "×")


def _rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for figure in figures:
        baseline = "" if figure.baseline is None else f"{figure.baseline:,.2f} {figure.unit}"
        ratio = "" if not figure.baseline else f"{figure.value / figure.baseline:,.2f}"
        rows.append((figure.suite, figure.name, f"{figure.value:,.2f} {figure.unit}", baseline,
                     figure.baseline_name or "", ratio))
    return rows


class _Progress:
    """What a running suite shows: a spinner on a terminal; elsewhere (a pipe, a CI log) a
    line when it starts, one every ``every`` seconds while it runs, and one when it ends."""

    def __init__(self, console: Console, every: float) -> None:
        self._console = console
        self._every = every

    @contextlib.contextmanager
    def running(self, suite: str) -> Iterator[None]:
        if self._console.is_terminal:
            with self._console.status(f"running the {suite} benchmarks..."):
                yield
            return
        started = time.monotonic()
        done = threading.Event()

        def tick() -> None:
            while not done.wait(self._every):
                _line(f"bench: {suite} still running, {time.monotonic() - started:.0f} s")

        _line(f"bench: {suite} started")
        ticker = threading.Thread(target=tick, name=f"bench-progress-{suite}", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            _line(f"bench: {suite} finished in {time.monotonic() - started:.1f} s")


def _line(text: str) -> None:
    click.echo(text, err=True)
    sys.stderr.flush()


@click.command("bench")
@click.option("--suite", "suites", multiple=True, type=click.Choice(tuple(SUITES)),
              help="Suites to run (repeatable; default: all).")
@click.option("--quick", is_flag=True,
              help="Scaled-down numbers (the figure names say the scale): a smoke run.")
@click.option("--database-url",
              help="Also run the store suite on this PostgreSQL database (postgresql://...); "
                   "a schema bench_<random> is created and dropped unless the URL names one.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("moonshard-bench.json"), show_default=True)
@click.option("--progress-every", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True,
              help="Seconds between progress lines when stderr is not a terminal.")
def bench(suites: tuple[str, ...], quick: bool, database_url: str | None, output: Path,
          progress_every: float) -> None:
    """Run the benchmarks; each figure is printed beside its baseline, measured in the same run.

    The × column is value / baseline.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    progress = _Progress(console, progress_every)
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    runs: dict[str, dict[str, object]] = {}
    for suite in suites or tuple(SUITES):
        started = time.perf_counter()
        with progress.running(suite), OtherCpu() as other:
            try:
                figures.extend(run_suite(suite, quick, database_url))
            except PartialRun as partial:
                figures.extend(partial.figures)
                failures[suite] = str(partial)
                console.print(f"[red]the {suite} suite failed part-way:[/red] {partial}")
            except Exception as error:  # one broken suite must not hide the others
                failures[suite] = f"{type(error).__name__}: {error}"
                console.print(f"[red]the {suite} suite failed:[/red] {failures[suite]}")
        # Work of other processes moves the figures: this says how quiet the machine was.
        runs[suite] = {"seconds": round(time.perf_counter() - started, 1),
                       "other_processes_cpu_share": other.share}
    Printer().table("moonshard bench", _COLUMNS, _rows(figures))
    report = {"machine": machine(), "at": time.time(), "quick": quick,
              "command": _command(suites, quick, database_url), "suites": runs,
              "failed": failures, "figures": [figure.to_json() for figure in figures]}
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _line(f"wrote {output}")
    if failures:
        raise SystemExit(1)
