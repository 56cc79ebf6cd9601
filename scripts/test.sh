#!/usr/bin/env bash
# Installs moonshard with its test tools into .venv, then runs the linters and the test suite,
# then the service suite again on the ray topology (MOONSHARD_TEST_TOPOLOGY=ray).
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
# The service suite again, every server on the ray topology and PostgreSQL: one local Ray head
# for the run (tests/service/conftest.py), each server folder its own schema. Skipped when the
# arguments name tests to run (a path): those were what was asked for.
for arg in "$@"; do
  if [[ -e "${arg%%::*}" ]]; then exit 0; fi
done
MOONSHARD_TEST_TOPOLOGY=ray .venv/bin/python -m pytest tests/service "$@"
