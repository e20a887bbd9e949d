"""The FLOP floor of one full-ranking validation pass of bench_scale.py's SASRec (d 64, L 50): the user tower as it
runs in evaluation (counted by ``t2diff.flops.FlopCounter`` over every validation user) plus the
score matmuls (users x items x D x 2). FLOPs do not depend on load or weights; a rate does, so the floor is taken
at the blocked-matmul rate that benchmarks/results/scale.json measured in the same run as its eval seconds (this
run's own rate is reported beside it).

    .venv/bin/python benchmarks/eval_floor.py [--items 1000000] [--threads 1] [--scale benchmarks/results/scale.json]

Writes benchmarks/results/scale_eval_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale import add_log_args, matmul_rate, prepared  # noqa: E402

from t2diff.config import load_config  # noqa: E402
from t2diff.data.batching import make_batch  # noqa: E402
from t2diff.data.prepared import PreparedDataset  # noqa: E402
from t2diff.flops import FlopCounter  # noqa: E402
from t2diff.provenance import provenance, write_json, write_markdown  # noqa: E402
from t2diff.run import build_model, build_split, data_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_log_args(ap, items=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/bench-scale")
    ap.add_argument("--out", default="benchmarks/results/scale_eval_floor")
    ap.add_argument("--scale", default="benchmarks/results/scale.json",
                    help="the bench_scale.py result whose eval seconds and matmul rate are used")
    args = ap.parse_args()
    prov = provenance()
    data = prepared(Path(args.work), args.items, args)
    cfg = load_config(ROOT / "configs/ml-1m/sasrec.yaml", [f"data.path={data}", "data.max_len=50"])
    ds = PreparedDataset.load(data)
    model = build_model(cfg, data_info(ds, cfg)).eval()
    ex = build_split(cfg, ds).valid
    # the evaluator's batches: sorted by history length, each as wide as its longest window + 1
    window = np.minimum(ex.positions, cfg.data.max_len)
    order = np.argsort(window, kind="stable")
    counter = FlopCounter()
    with torch.no_grad(), counter:
        for s in range(0, len(order), cfg.eval.batch_size):
            sel = order[s: s + cfg.eval.batch_size]
            width = min(cfg.data.max_len, int(window[sel].max()) + 1)
            model.user_embeddings(make_batch(ds, ex.users[sel], ex.positions[sel], width))
    tower = counter.get_total_flops()
    d = model.item_embeddings().shape[1]
    scores = len(ex) * ds.num_items * d * 2
    here = matmul_rate(d, args.threads)
    out = {"items": args.items, "items_seen": ds.num_items, "users": len(ex), "user_tower_gflop": tower / 1e9,
           "score_matmul_gflop": scores / 1e9, "this_run_matmul_gflops": here, "threads": args.threads}
    scale = ROOT / args.scale
    if scale.exists():
        res = json.loads(scale.read_text())
        # the floor at the faster of the two measured rates: a rate measured low (load) never flatters
        rate = max(res["matmul_gflops"], here) * 1e9
        out["floor_matmul_gflops"] = round(rate / 1e9, 1)
        rows = [r for r in res["rows"] if r.get("catalogue") == args.items and r.get("mode") == "after"
                and "eval_s" in r]
        out["scale_json_matmul_gflops"] = res["matmul_gflops"]
        out["floor_s"] = round((tower + scores) / rate, 2)
        out["score_only_floor_s"] = round(scores / rate, 2)
        out["measured_eval_s_after"] = {r["loss"]: r["eval_s"] for r in rows}
        out["measured_over_floor"] = {k: round(v / out["floor_s"], 2) for k, v in out["measured_eval_s_after"].items()}
    write_json(Path(args.out + ".json"), out, prov)
    body = [f"# Evaluation FLOP floor at {args.items:,} items (bench_scale.py's SASRec, {len(ex):,} validation users)",
            "", "| user tower GFLOP | score matmuls GFLOP | matmul GFLOP/s (bench run / this run / floor's) | floor s "
            "| measured eval s (bench run, after) | measured / floor |", "|---|---|---|---|---|---|",
            f"| {tower / 1e9:.1f} | {scores / 1e9:.1f} | {out.get('scale_json_matmul_gflops')} / {here:.1f} / "
            f"{out.get('floor_matmul_gflops')} | {out.get('floor_s')} | "
            f"{out.get('measured_eval_s_after')} | {out.get('measured_over_floor')} |", "",
            f"Bench run: `{args.scale}`. Rates: [512, 64] x [64, 2048] blocks into a reused buffer, {args.threads} "
            "thread(s), best of 5 passes; the floor takes the faster of the bench run's and this run's rate, so a "
            "rate measured under load cannot make the floor look close."]
    write_markdown(Path(args.out + ".md"), "\n".join(body) + "\n", prov)
    print("\n".join(body))


if __name__ == "__main__":
    main()
