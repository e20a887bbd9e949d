#!/usr/bin/env bash
# Full-budget ML-1M runs on one GPU, all through `t2diff compare` (same splits, seeds and evaluator per table):
#   paper/        paper protocol, seed 2025: T2Diff, its ablations (mixed attention, W/O DP), the kl-last and authors-code variants,
#                 SASRec, Caser, GRU4Rec, BERT4Rec, DAT+           (issues 3 and 4)
#   paper-s2026/  the same T2Diff group and SASRec with train.seed=2026 (a second training seed)
#   loo/          leave-one-out, every model, early stopping on validation
#   infer_cuda.*  user-tower inference time (bench_infer.py --device cuda), alone on the GPU
# Every model of a table trains as its own process (`compare --only`, settings forced over the whole list), all
# at once on the one GPU; training stops at DEADLINE seconds and a run that has not finished is left out of the
# tables (`compare --no-train`). Fails fast (exit 3) if any job dies before finishing its first epoch.
#
#   bash benchmarks/gpu_ml1m.sh                       # needs cache/ml-1m (t2diff prepare ml-1m)
#   GRPS_ONLY=loo LOO_LABELS="t2diff-loo sasrec" SKIP_INFER=1 bash benchmarks/gpu_ml1m.sh   # a part of it
#   (PAPER_LABELS, S2026_LABELS likewise; EXTRA="eval.batch_size=4096" evaluates in fewer, larger GPU batches)
#   OUT=/tmp/o DEV=cpu PAPER_EPOCHS=1 LOO_EPOCHS=1 DEADLINE=600 bash benchmarks/gpu_ml1m.sh   # a dry run on CPU
set -u
PY=${PY:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
DEV=${DEV:-cuda}
R=${R:-runs/gpu}
OUT=${OUT:-$R/out}
DEADLINE=${DEADLINE:-420}
PAPER_EPOCHS=${PAPER_EPOCHS:-50}
LOO_EPOCHS=${LOO_EPOCHS:-200}
LOO_PATIENCE=${LOO_PATIENCE:-10}
SMOKE=${SMOKE:-150}  # every job must have finished epoch 1 (or be done) by then, else something is wrong
C=configs/ml-1m
mkdir -p "$R" "$OUT"
CMP=("$PY" -m t2diff.cli compare --no-progress --device "$DEV" --max-over-epochs)

T2="$C/t2diff.yaml $C/t2diff-mixed-attention.yaml $C/t2diff-wo-dp.yaml $C/t2diff-kl-last.yaml $C/t2diff-authors.yaml"
T2_LABELS="t2diff t2diff-mixed-attention t2diff-wo-dp t2diff-kl-last t2diff-authors"
declare -A CFGS LABELS ARGS
CFGS[paper]="$T2 $C/sasrec-paper.yaml $C/caser-paper.yaml $C/gru4rec-paper.yaml $C/bert4rec-paper.yaml $C/dat-paper.yaml"
LABELS[paper]="$T2_LABELS sasrec caser gru4rec bert4rec dat"
ARGS[paper]="--paper --paper-dataset ml-1m train.epochs=$PAPER_EPOCHS train.threads=1"
CFGS[paper-s2026]="$T2 $C/sasrec-paper.yaml"
LABELS[paper-s2026]="$T2_LABELS sasrec"
ARGS[paper-s2026]="train.epochs=$PAPER_EPOCHS train.seed=2026 train.threads=1"
CFGS[loo]="$C/t2diff-loo.yaml $C/t2diff-mixed-attention.yaml $C/t2diff-wo-dp.yaml $C/t2diff-kl-last.yaml $C/sasrec.yaml $C/caser.yaml $C/gru4rec.yaml $C/bert4rec.yaml $C/dat.yaml"
LABELS[loo]="t2diff-loo t2diff-mixed-attention t2diff-wo-dp t2diff-kl-last sasrec caser gru4rec bert4rec dat"
ARGS[loo]="--protocol loo train.epochs=$LOO_EPOCHS train.patience=$LOO_PATIENCE train.threads=1 train.select_metric=ndcg@10"
for g in paper paper-s2026 loo; do ARGS[$g]="${ARGS[$g]} ${EXTRA:-}"; done  # EXTRA: e.g. data.path=... (dry run)
read -r -a GRPS <<< "${GRPS_ONLY:-paper paper-s2026 loo}"  # GRPS_ONLY / *_LABELS: run a part of it
[ -n "${PAPER_LABELS:-}" ] && LABELS[paper]=$PAPER_LABELS
[ -n "${S2026_LABELS:-}" ] && LABELS[paper-s2026]=$S2026_LABELS
[ -n "${LOO_LABELS:-}" ] && LABELS[loo]=$LOO_LABELS

start=$(date +%s)
declare -A PID RUN RC
for g in "${GRPS[@]}"; do
  for lab in ${LABELS[$g]}; do
    # shellcheck disable=SC2086
    "${CMP[@]}" --configs ${CFGS[$g]} --out "$R/$g" --only "$lab" ${ARGS[$g]} > "$R/$g-$lab.log" 2>&1 &
    PID[$g/$lab]=$!
    RUN[$g/$lab]="$R/$g/runs/$lab"
  done
done
echo "started ${#PID[@]} jobs on $DEV"

smoke_ok=0
while :; do
  sleep 5
  now=$(( $(date +%s) - start ))
  alive=0; started=0; failed=""
  for k in "${!PID[@]}"; do
    if [ -z "${RC[$k]:-}" ] && kill -0 "${PID[$k]}" 2>/dev/null; then
      alive=$((alive + 1))
    elif [ -z "${RC[$k]:-}" ]; then
      wait "${PID[$k]}"; RC[$k]=$?
    fi
    [ -n "${RC[$k]:-}" ] && [ "${RC[$k]}" -ne 0 ] && failed="$failed $k(rc=${RC[$k]})"
    [ -s "${RUN[$k]}/metrics.jsonl" ] && started=$((started + 1))
  done
  if [ -n "$failed" ] && [ "$smoke_ok" -eq 0 ]; then
    echo "FAILED before the smoke check passed:$failed"
    for k in $failed; do k=${k%%(*}; echo "== $k"; tail -25 "$R/${k%%/*}-${k##*/}.log"; done
    pkill -P $$ 2>/dev/null; exit 3
  fi
  if [ "$smoke_ok" -eq 0 ] && [ "$started" -ge "${#RUN[@]}" ]; then smoke_ok=1; echo "smoke ok at ${now}s"; fi
  if [ "$smoke_ok" -eq 0 ] && [ "$now" -gt "$SMOKE" ]; then
    echo "smoke check: only $started of ${#RUN[@]} jobs finished an epoch by ${SMOKE}s (going on)"; smoke_ok=1
  fi
  [ $((now % 60)) -lt 5 ] && echo "${now}s: $alive jobs running; failed:${failed:- none}"
  [ "$alive" -eq 0 ] && break
  if [ "$now" -gt "$DEADLINE" ]; then echo "deadline ${DEADLINE}s: stopping $alive unfinished jobs"; break; fi
done
pkill -P $$ 2>/dev/null; sleep 2
echo "training phase: $(( $(date +%s) - start ))s"

[ -n "${SKIP_INFER:-}" ] || "$PY" benchmarks/bench_infer.py --device "$DEV" --batch-size 256 --repeats 10 --out "$OUT" > "$OUT/infer.log" 2>&1 \
  || tail -5 "$OUT/infer.log"
for g in "${GRPS[@]}"; do
  # shellcheck disable=SC2086
  "${CMP[@]}" --configs ${CFGS[$g]} --out "$R/$g" --no-train ${ARGS[$g]} > "$R/$g-table.log" 2>&1 \
    || tail -5 "$R/$g-table.log"
done
echo "total: $(( $(date +%s) - start ))s"
# results without the (large) checkpoints; two T2Diff paper models without optimiser state, for `t2diff diagnose`
tar czf "$OUT/runs.tgz" --exclude='*.pt' "$R"/*.log "${GRPS[@]/#/$R/}" 2>/dev/null
"$PY" - "$R/paper/runs" "$OUT" <<'EOF'
import sys, torch
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
for lab in ("t2diff", "t2diff-kl-last", "t2diff-authors"):
    f = src / lab / "last.pt"
    if f.exists():
        ck = torch.load(f, map_location="cpu", weights_only=True)
        ck.pop("optimizer_state", None)
        torch.save(ck, out / f"paper_{lab}.pt")
EOF
ls -la "$OUT"
