"""``moonshard bench``: run the benchmark suites, print a table, write JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from moonshard.bench.measure import Figure
from moonshard.bench.sandbox_bench import run_sandbox_bench

__all__ = ["bench"]

_SUITES = ("sandbox", "store")


def _machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform()}


def _run_suite(name: str, quick: bool, database_url: str | None) -> list[Figure]:
    if name == "sandbox":
        return run_sandbox_bench(quick)
    raise click.ClickException(f"no suite {name}")


@click.command("bench")
@click.option("--suite", "suites", multiple=True, type=click.Choice(_SUITES),
              help="Suites to run (default: all).")
@click.option("--quick", is_flag=True, help="Fewer iterations: a smoke run.")
@click.option("--database-url", help="Also measure the store on this database (postgresql://...).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("moonshard-bench.json"), show_default=True)
def bench(suites: tuple[str, ...], quick: bool, database_url: str | None, output: Path) -> None:
    """Run the benchmarks; each figure is printed beside its baseline, measured in the same run."""
    console = Console()
    figures: list[Figure] = []
    for suite in suites or _SUITES:
        with console.status(f"running the {suite} benchmarks..."):
            figures.extend(_run_suite(suite, quick, database_url))
    table = Table(title="moonshard bench")
    for column in ("suite", "figure", "value", "baseline", "baseline is"):
        table.add_column(column, justify="right" if column in ("value", "baseline") else "left")
    for figure in figures:
        baseline = f"{figure.baseline:,.2f} {figure.unit}" if figure.baseline is not None else ""
        table.add_row(figure.suite, figure.name, f"{figure.value:,.2f} {figure.unit}", baseline,
                      figure.baseline_name or "")
    console.print(table)
    report = {"machine": _machine(), "at": time.time(), "quick": quick,
              "figures": [figure.to_json() for figure in figures]}
    output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {output}")
