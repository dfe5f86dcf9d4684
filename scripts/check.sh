#!/usr/bin/env bash
# The one quality gate, locally and in CI: format check, lint, type check, then the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin
echo "== ruff format --check"; $PY/ruff format --check .
echo "== ruff check";          $PY/ruff check .
echo "== mypy";                $PY/mypy
echo "== pytest";              $PY/python -m pytest -q "$@"
