"""The layer rules (pyproject.toml ``[tool.importlinter]``) hold, and the checker that CI runs
fails when one is broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """Runs the checker with the project's rules over the package found in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_layer_rules_hold() -> None:
    checked = lint(ROOT / "src")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout


def test_a_sandbox_that_imports_the_store_fails_the_check(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "moonshard", tmp_path / "moonshard",
                    ignore=shutil.ignore_patterns("__pycache__"))
    driver = tmp_path / "moonshard" / "sandbox" / "driver.py"
    driver.write_text(driver.read_text() + "\nfrom moonshard.store.api import Store  # bad\n")
    checked = lint(tmp_path)
    assert checked.returncode != 0
    assert "the sandbox imports no host, store" in checked.stdout
    assert "BROKEN" in checked.stdout
    assert "moonshard.sandbox.driver -> moonshard.store.api" in checked.stdout
