"""Smoke test of ``moonshard bench``: every suite runs at a tiny scale and gives figures of the
right shape. Benchmarks are not tests: no timing is checked here."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from moonshard.bench import store_suite, timers_bench, workers_bench
from moonshard.bench.measure import Figure
from moonshard.cli.bench_cmd import SUITES, bench

_FIGURE_KEYS = {"suite", "name", "value", "unit", "baseline", "baseline_name"}


def _tiny_store() -> list[Figure]:
    return store_suite.run_store_suite(
        scale=store_suite.StoreScale(phase_seconds=0.1, store_bench_seconds=0.6))


def _tiny_workers() -> list[Figure]:
    return workers_bench.run_workers_bench(scale=workers_bench.WorkersScale(
        tenants=8, in_flight=4, seconds=0.2, raw_calls=100, recoveries=1, old_tenants_large=12))


def _tiny_timers() -> list[Figure]:
    return timers_bench.run_timers_bench(scale=timers_bench.TimersScale(
        pending=500, pending_tenants=5, rate=200.0, stream_seconds=0.5, stream_tenants=4,
        backlog=100, backlog_tenants=4, drain_timeout=30.0, settle_seconds=0.2))


def _check_figure(figure: dict[str, object], suite: str) -> None:
    assert set(figure) == _FIGURE_KEYS
    assert figure["suite"] == suite
    for text in ("name", "unit"):
        assert isinstance(figure[text], str)
        assert figure[text]
    value, baseline = figure["value"], figure["baseline"]
    assert isinstance(value, float | int)
    assert math.isfinite(value)
    if baseline is not None:
        assert isinstance(baseline, float | int)
        assert math.isfinite(baseline)
        assert isinstance(figure["baseline_name"], str)
        assert figure["baseline_name"]


def test_the_cli_writes_a_report(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, ["--suite", "sandbox", "--quick", "--output",
                                        str(output)])
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert {"machine", "at", "quick", "command", "suites", "failed", "figures"} <= set(
        report)
    assert report["quick"] is True
    assert report["failed"] == {}
    assert {"cpu", "cores", "python", "lupa"} <= set(report["machine"])
    assert report["figures"]
    for figure in report["figures"]:
        _check_figure(figure, "sandbox")


def test_every_suite_is_reachable_from_the_cli() -> None:
    assert set(SUITES) == {"sandbox", "store", "workers", "timers"}


@pytest.mark.parametrize(("suite", "run"), [
    ("store", _tiny_store), ("workers", _tiny_workers), ("timers", _tiny_timers)])
def test_a_suite_gives_figures_with_baselines(suite: str, run: Callable[[], list[Figure]]) -> None:
    figures = run()
    assert figures
    for figure in figures:
        _check_figure(figure.to_json(), suite)
        assert figure.baseline is not None, figure.name


def test_piped_bench_prints_progress_lines_and_an_exact_table(tmp_path: Path) -> None:
    import subprocess
    import sys

    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "moonshard", "bench", "--suite", "sandbox", "--quick",
         "--output", str(output), "--progress-every", "0.2"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    progress = done.stderr.splitlines()
    assert progress[0] == "bench: sandbox started"
    assert progress[-2].startswith("bench: sandbox finished in ")
    assert all(line.startswith("bench: sandbox still running, ")
               for line in progress[1:-2]), progress
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert rows[0] == ["suite", "figure", "value", "baseline", "baseline is", "×"]
    report = json.loads(output.read_text())
    assert [row[1] for row in rows[1:]] == [figure["name"] for figure in report["figures"]]
