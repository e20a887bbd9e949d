#!/usr/bin/env bash
# The main job end to end on real data: prepare ML-1M, train SASRec (leave-one-out, full ranking), evaluate,
# print the metrics table. Data: $T2DIFF_DATA_DIR, else ../shared/data beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export T2DIFF_DATA_DIR=${T2DIFF_DATA_DIR:-$(cd .. && pwd)/shared/data}
RUN=${RUN:-runs/sasrec-ml1m-loo}
.venv/bin/t2diff prepare ml-1m --out cache/ml-1m
rm -rf "$RUN"
# 8 epochs keep the whole job within ~15 minutes on a 2-core CPU machine; RESULTS.md has longer runs
.venv/bin/t2diff train --config configs/ml-1m/sasrec.yaml --run-dir "$RUN" train.epochs="${EPOCHS:-8}" "$@"
.venv/bin/t2diff evaluate "$RUN" --no-progress
