#!/usr/bin/env bash
# The test command: set up, lint, format check, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy  # the TensorRT code against NVIDIA's stubs ([tool.mypy])
# One worker per CPU (at most 4; tests/conftest.py pins each to its own CPU),
# a test file per worker so module fixtures are made once.
.venv/bin/python -m pytest -n auto --dist loadfile --durations=15 "$@"  # the 15 slowest listed: the suite stays under 5 minutes
