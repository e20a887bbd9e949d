#!/usr/bin/env bash
# Train (or resume) the baselines' LOO max_len-200 runs to early stopping on this machine, one after another,
# each under a wall-clock budget (BUDGET minutes per invocation, default the config's train.max_minutes; run this
# again to continue the runs that hit it: --resume counts every epoch), then add their rows to
# benchmarks/results/converged_loo.{md,json,png} (rows of models not trained here are kept, with their own
# provenance). MODELS="sasrec gru4rec" to pick; THREADS (default 2) torch threads.
set -uo pipefail
cd "$(dirname "$0")/.."
models=(${MODELS:-sasrec gru4rec bert4rec caser dat})
for m in "${models[@]}"; do
  extra=("train.threads=${THREADS:-2}")
  [ -n "${BUDGET:-}" ] && extra+=("train.max_minutes=$BUDGET")
  .venv/bin/t2diff train -c "configs/ml-1m/$m-200.yaml" --run-dir "runs/$m-200" --resume --no-progress "${extra[@]}" \
      || echo "warning: $m did not finish" >&2
done
runs=(); for m in "${models[@]}"; do [ -f "runs/$m-200/metrics.json" ] && runs+=("runs/$m-200"); done
.venv/bin/python benchmarks/converged_loo.py "${runs[@]}"
