#!/usr/bin/env bash
# Train (or resume) every baseline's LOO max_len-200 run to early stopping on this machine, one after another,
# each under its config's train.max_minutes (run this again to continue the runs that hit the budget), then
# write benchmarks/results/converged_loo.{md,json,png}. MODELS="sasrec gru4rec" to pick.
set -uo pipefail
cd "$(dirname "$0")/.."
for m in ${MODELS:-sasrec gru4rec bert4rec caser dat}; do
  .venv/bin/t2diff train -c "configs/ml-1m/$m-200.yaml" --run-dir "runs/$m-200" --resume --no-progress \
      || echo "warning: $m did not finish" >&2
done
runs=(); for m in sasrec gru4rec bert4rec caser dat; do [ -f "runs/$m-200/metrics.json" ] && runs+=("runs/$m-200"); done
.venv/bin/python benchmarks/converged_loo.py "${runs[@]}"
