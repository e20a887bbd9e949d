#!/usr/bin/env bash
# Create .venv at the repository root and install t2diff into it (CPU torch, never a CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch first and pinned: on these machines this takes the local CPU wheel; unpinned would pull CUDA builds
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "t2diff installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
