#!/usr/bin/env bash
# Installs the test dependencies into .venv and runs lint, type checks and the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "== chromium (console tests)"; bash scripts/install-chromium.sh
echo "== ruff check"; .venv/bin/ruff check broker tests compat_tests benchmarks
echo "== ruff format --check"; .venv/bin/ruff format --check broker tests compat_tests benchmarks
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
    # The optional compiled build (README, "Compiled build") passes the same suite.
    bash scripts/test-compiled.sh -q
fi
