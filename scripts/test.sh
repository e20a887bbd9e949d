#!/usr/bin/env bash
# Install and run the test suite (real-data tests read $T2DIFF_DATA_DIR, else ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export T2DIFF_DATA_DIR=${T2DIFF_DATA_DIR:-$(cd .. && pwd)/shared/data}
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
