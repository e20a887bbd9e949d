"""Benchmark: full-ranking evaluation of every ML-1M user (leave-one-out test, 6,040 users x 3,706 items).

Times ``rank_examples`` (user tower + one matrix product per chunk + rank counting) for SASRec at the history
lengths of our configs, and, in the same run:
- ``before``: the former path (every position of every block at the full window width), to show the gain of
  ranking only the last position and batching by history length;
- the bare score matrix product for the same users;
- the FLOP floor of the user tower as it now runs (``t2diff.flops.FlopCounter`` over the whole evaluation, at the rate
  of a same-run [512, 64] x [64, 3706] matmul). Target: <= 2 s on a 2-core machine.

    .venv/bin/python benchmarks/bench_eval.py [--data cache/ml-1m] [--repeats 3]

Writes benchmarks/results/eval.json and eval.md (with the command, commit and machine: t2diff.provenance).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from t2diff.config import load_config
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import leave_one_out
from t2diff.evaluate import rank_examples
from t2diff.flops import FlopCounter
from t2diff.provenance import provenance, write_json, write_markdown
from t2diff.run import build_model, data_info


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _former(model, ds, ex, max_len: int, repeats: int) -> float:
    """The evaluation as it ran before: full window width, every position of every block."""
    cls = type(model)
    saved = cls.padding_free
    cls.padding_free = False
    try:
        return timed(lambda: rank_examples(model, ds, ex, max_len, batch_size=512,
                                           user_fn=lambda b: model.encode(b.seq)[:, -1]).ranks, repeats)
    finally:
        cls.padding_free = saved


def main(argv: list[str] | None = None) -> None:
    prov = provenance(argv, __file__)  # before anything is written: the outputs are tracked files
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="cache/ml-1m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    ds = PreparedDataset.load(args.data)
    ex = leave_one_out(ds).test
    rows = []
    for max_len in (50, 200):
        cfg = load_config("configs/ml-1m/sasrec.yaml", [f"data.path={args.data}", f"data.max_len={max_len}"])
        torch.manual_seed(0)
        model = build_model(cfg, data_info(ds, cfg)).eval()
        full = timed(lambda m=model, L=max_len: rank_examples(m, ds, ex, L, batch_size=512).ranks, args.repeats)
        with FlopCounter() as fc, torch.no_grad():
            rank_examples(model, ds, ex, max_len, batch_size=512)
        flops = fc.get_total_flops()
        before = _former(model, ds, ex, max_len, args.repeats)
        u = torch.randn(len(ex), cfg.model.get("hidden", 64))
        items = model.item_embeddings().detach()
        ref = timed(lambda u=u, items=items: (u @ items.T).max(), args.repeats)
        a, b = torch.randn(512, items.shape[1]), items[1:].contiguous()
        rate = 2 * a.shape[0] * b.shape[0] * b.shape[1] / timed(lambda a=a, b=b: a @ b.T, 5)  # FLOP/s
        rows.append({"model": "sasrec", "max_len": max_len, "users": len(ex), "items": ds.num_items,
                     "seconds": round(full, 3), "before_seconds": round(before, 3),
                     "speedup": round(before / full, 2), "gflop": round(flops / 1e9, 2),
                     "floor_seconds": round(flops / rate, 3), "ratio_to_floor": round(full * rate / flops, 2),
                     "score_matmul_seconds": round(ref, 4), "ratio_to_matmul": round(full / ref, 1)})
        print(rows[-1])
    out = Path(args.out)
    meta = {"torch_threads": torch.get_num_threads(), "target_seconds": 2.0, "data": args.data,
            "repeats": args.repeats, "statistic": "median seconds over repeats, after one warm-up call"}
    write_json(out / "eval.json", {"meta": meta, "rows": rows}, prov)
    md = ["# Full-ranking evaluation time: every ML-1M user, leave-one-out test", "",
          f"SASRec (random weights), `rank_examples` with batch 512 vs the bare score matmul for the same users; "
          f"median of {args.repeats} after a warm-up, {meta['torch_threads']} torch threads. Target: <= "
          f"{meta['target_seconds']} s.", "",
          "| model | L | users | items | full-ranking eval (s) | before (s) | speed-up | GFLOP | FLOP floor (s) | "
          "eval / floor | score matmul alone (s) |", "|---" * 11 + "|"]
    md += [f"| {r['model']} | {r['max_len']} | {r['users']} | {r['items']} | {r['seconds']} | {r['before_seconds']} | "
           f"{r['speedup']}x | {r['gflop']} | {r['floor_seconds']} | {r['ratio_to_floor']} | "
           f"{r['score_matmul_seconds']} |" for r in rows]
    write_markdown(out / "eval.md", "\n".join(md), prov)


if __name__ == "__main__":
    main()
