#!/usr/bin/env bash
# Installs moonshard with its test tools into .venv, then runs the linters and the test suite.
# Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust): its tests fail, never skip, without it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/ruff check src tests
.venv/bin/mypy
# The layer rules of docs/ARCHITECTURE.md (pyproject.toml [tool.importlinter]).
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
