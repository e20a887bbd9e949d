"""Benchmark: large catalogues on one machine (issue 16's table) -- train s/epoch, validation eval s, peak RSS and
validation NDCG@10 of SASRec (d 64, L 50, one epoch) on seeded synthetic logs of any size.

The logs: ``--users`` users x ``--per-user`` interactions over a catalogue of N items with Zipf-like popularity
(exponent ``--zipf``), and a planted sequential rule so NDCG means something: with probability 0.5 the next item
is a fixed random successor of the previous one, else a popularity draw. Prepared through the generic reader
(``t2diff prepare``'s path; items never drawn do not exist, so "seen" items < N).

Each row trains in its own process (its peak RSS is that process's ru_maxrss). ``before`` rows run the former
code paths (``train.item_updates=dense``, ``eval.item_block=null``: the whole [users, items] score matrix per
chunk); ``after`` rows the defaults (sparse item updates from 50 k items, evaluation in item blocks). The eval
floor is the score matmuls alone (valid users x items x D x 2 FLOPs) at the rate of a same-run blocked matmul
[512, 64] x [64, 2048] with the same threads.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--threads 2] [--modes before after]
        [--negatives uniform popularity in_batch mixed]   # the negatives comparison at the largest size

Writes benchmarks/results/scale.{json,md} (command, commit, machine: t2diff.provenance).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from t2diff.provenance import provenance, write_json, write_markdown  # noqa: E402

MODES = {"before": ["train.item_updates=dense", "eval.item_block=null"], "after": []}


def synthetic_log(path: Path, num_users: int, per_user: int, num_items: int, zipf: float, seed: int) -> Path:
    """Write the log described in the module docstring as a CSV (user,item,ts) at ``path``."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, num_items + 1) ** zipf
    cdf = np.cumsum(w / w.sum())
    succ = rng.permutation(num_items)  # the planted rule: item i -> succ[i]
    n = num_users * per_user
    draws = np.minimum(np.searchsorted(cdf, rng.random(n)), num_items - 1).reshape(num_users, per_user)
    follow = rng.random((num_users, per_user)) < 0.5
    items = draws.copy()
    for j in range(1, per_user):  # vectorised over users
        items[:, j] = np.where(follow[:, j], succ[items[:, j - 1]], draws[:, j])
    users = np.repeat(np.arange(num_users, dtype=np.int64), per_user)
    times = 1_600_000_000 + np.tile(np.arange(per_user, dtype=np.int64) * 60, num_users)
    table = np.stack([users, items.reshape(-1).astype(np.int64), times], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("user,item,ts\n")
        np.savetxt(f, table, fmt="%d", delimiter=",")
    return path


def prepared(folder: Path, num_items: int, args: argparse.Namespace) -> Path:
    from t2diff.data.generic import ColumnSpec, read_interactions
    from t2diff.data.prepare import FilterSpec, prepare

    out = folder / f"scale-{num_items}-{args.users}x{args.per_user}-z{args.zipf}-s{args.seed}"
    if not (out / "meta.json").exists():
        log = synthetic_log(out.parent / (out.name + ".csv"), args.users, args.per_user, num_items, args.zipf,
                            args.seed)
        prepare(read_interactions(log, ColumnSpec(user="user", item="item", time="ts")), out, FilterSpec(),
                "synthetic-scale")
    return out


def add_log_args(ap: argparse.ArgumentParser, items: bool = False) -> None:
    """The synthetic log's arguments (shared with bench_ddp_scale.py and eval_floor.py)."""
    if items:
        ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--per-user", type=int, default=50)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)


def train_row(data: Path, run_dir: Path, overrides: list[str], threads: int) -> dict:
    """One epoch of SASRec in a child process; its metrics, times and peak RSS."""
    code = ("import resource, sys; from t2diff.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    cmd = [sys.executable, "-c", code, "train", "-c", str(ROOT / "configs/ml-1m/sasrec.yaml"), "--run-dir",
           str(run_dir), "--no-progress", f"data.path={data}", "data.max_len=50", "train.epochs=1",
           f"train.threads={threads}", *overrides]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-2000:], "overrides": overrides}
    rss = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    hist = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"overrides": overrides, "train_s": hist["train_seconds"],
            "eval_s": round(hist["seconds"] - hist["train_seconds"], 2), "peak_rss_gb": round(rss / 2**20, 3),
            "valid_ndcg@10": hist["valid"]["ndcg@10"], "num_valid": hist["valid"]["num_examples"],
            "item_updates": metrics.get("item_updates"), "process_wall_s": round(wall, 1)}


def matmul_rate(dim: int, threads: int, repeats: int = 5) -> float:
    """GFLOP/s of [512, D] x [D, 2048] blocks (the evaluation's products, into one reused buffer as it does),
    same threads, the best of ``repeats`` passes over 200 k items (a single pass was seen at half the rate)."""
    torch.set_num_threads(threads)
    u, v = torch.randn(512, dim), torch.randn(200_704, dim)  # 98 blocks of 2048
    buf = torch.empty(512, 2048)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for a in range(0, v.shape[0], 2048):
            torch.mm(u, v[a: a + 2048].T, out=buf)
        best = min(best, time.perf_counter() - t)
    return 512 * v.shape[0] * dim * 2 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    add_log_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--modes", nargs="+", default=["before", "after"], choices=list(MODES))
    ap.add_argument("--full-softmax-up-to", type=int, default=10_000,
                    help="also train full softmax at sizes up to this (it costs N x I x D per step)")
    ap.add_argument("--samplers", nargs="*", default=["popularity", "in_batch", "mixed"],
                    help="negative samplers compared with uniform at the largest size ('after' mode)")
    ap.add_argument("--work", default="runs/bench-scale", help="prepared logs and runs")
    ap.add_argument("--out", default="benchmarks/results/scale")
    args = ap.parse_args()
    prov = provenance()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    d = 64
    rate = matmul_rate(d, args.threads)
    for n in args.sizes:
        data = prepared(work, n, args)
        meta = json.loads((data / "meta.json").read_text())
        runs = [("uniform", ["train.loss=sampled", "train.negative_sampler=uniform",
                             f"train.num_negatives={args.negatives}"])]
        if n <= args.full_softmax_up_to:
            runs.append(("full softmax", ["train.loss=full"]))
        if n == max(args.sizes):
            runs += [(s, ["train.loss=sampled", f"train.negative_sampler={s}", f"train.num_negatives={args.negatives}"])
                     for s in args.samplers]
        for loss_name, ov in runs:
            for mode in args.modes:
                if loss_name not in ("uniform", "full softmax") and mode != "after":
                    continue  # the negatives comparison runs on today's code only
                tag = f"{n}-{loss_name.replace(' ', '_')}-{mode}"
                run_dir = work / "runs" / tag
                if run_dir.exists():
                    import shutil

                    shutil.rmtree(run_dir)
                r = train_row(data, run_dir, ov + MODES[mode], args.threads)
                floor = meta["num_users"] * meta["num_items"] * d * 2 / (rate * 1e9)  # valid = one per user
                r.update({"catalogue": n, "items_seen": meta["num_items"], "loss": loss_name, "mode": mode,
                          "eval_floor_s": round(floor, 2),
                          "eval_over_floor": round(r["eval_s"] / floor, 2) if "eval_s" in r else None})
                rows.append(r)
                print(json.dumps(r), flush=True)
    out = {"rows": rows, "matmul_gflops": round(rate, 1), "threads": args.threads, "users": args.users,
           "per_user": args.per_user, "model": "sasrec d=64 L=50, 1 epoch, batch 128"}
    write_json(Path(args.out + ".json"), out, prov)
    write_markdown(Path(args.out + ".md"), render(out), prov)


def render(out: dict) -> str:
    lines = [f"# Large catalogues on one machine (SASRec d 64, L 50, one epoch, {out['threads']} threads)", "",
             f"Synthetic logs: {out['users']:,} users x {out['per_user']} interactions, Zipf-like popularity with a "
             "planted successor rule (benchmarks/bench_scale.py). `before` = the former paths (dense item-table "
             "updates, the whole score matrix per user chunk); `after` = today's defaults (row-sparse updates with "
             "LazyAdam from 50 k items, evaluation in 2,048-item blocks). Eval = one full-ranking validation pass "
             "over every user; its floor = the score matmuls alone at the same-run rate of "
             f"{out['matmul_gflops']} GFLOP/s. Peak RSS = the training process's ru_maxrss.", "",
             "| items (seen) | loss | mode | item updates | train s / epoch | eval s | eval / floor | peak RSS GB "
             "| valid NDCG@10 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['catalogue']:,} ({r['items_seen']:,}) | {r['loss']} | {r['mode']} | failed: "
                         f"{r['error'][-120:].strip()!r} | | | | | |")
            continue
        lines.append(f"| {r['catalogue']:,} ({r['items_seen']:,}) | {r['loss']} | {r['mode']} | "
                     f"{r['item_updates']} | {r['train_s']:.1f} | {r['eval_s']:.1f} | {r['eval_over_floor']} | "
                     f"{r['peak_rss_gb']:.2f} | {r['valid_ndcg@10']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
