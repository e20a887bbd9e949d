#!/usr/bin/env bash
# The main job end to end on real data: prepare ML-1M, train SASRec at the references' settings (leave-one-out,
# max_len 200, full-softmax CE, seen items masked) for a wall-clock budget, evaluate masked and unmasked, print
# the published bar beside. Data: $T2DIFF_DATA_DIR, else ../shared/data beside the repository.
# MINUTES (default 10.5): the training budget; the epoch that crosses it is the last one. About 12 minutes in all
# on a quiet 2-core machine, setup included (measured: README). `--resume`-able: RESUME=1 bash scripts/main.sh continues the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export T2DIFF_DATA_DIR=${T2DIFF_DATA_DIR:-$(cd .. && pwd)/shared/data}
RUN=${RUN:-runs/sasrec-ml1m-main}
.venv/bin/t2diff prepare ml-1m --out cache/ml-1m
if [ -n "${RESUME:-}" ]; then resume=(--resume); else rm -rf "$RUN"; resume=(); fi
.venv/bin/t2diff train --config configs/ml-1m/sasrec-200.yaml --run-dir "$RUN" --no-progress "${resume[@]}" \
    train.max_minutes="${MINUTES:-10.5}" "$@"
echo "== test, seen items masked (as the published numbers are):"
.venv/bin/t2diff evaluate "$RUN" --no-progress --mask-seen --ks 10 20
echo "== test, seen items not masked:"
.venv/bin/t2diff evaluate "$RUN" --no-progress --no-mask-seen --ks 10 20
echo "published bar (Klenitskiy & Vasilev, RecSys'23, SASRec+ with full-softmax CE, max_len 200, masked, ~63 epochs):"
echo "  recall@10 (HR@10) 0.3152, ndcg@10 0.1821. More epochs: RESUME=1 MINUTES=60 bash scripts/main.sh"
