"""``t2diff diagnose``: Figure 4 of the paper for a trained T2Diff run.

For N evaluation examples of the run's protocol (test by default), the cosine similarity between the
approximator's z0_hat and the true z0 at every reverse step t = T..1 of the inference chain (Alg. 2), next to
the one-step prediction from the noised true z0 that training sees (Alg. 1), so the train / inference
mismatch is visible, and the cosine of the chain's state after each step (from noise to the returned z0).
Writes ``diffusion_cosine_trace.csv`` and ``.png`` (diagnostics.write_trace).

With ``--xhat-sources``, also ranks the whole split with x_hat from each named source (chain, none, last-item,
onestep@R: see diagnostics.xhat_source_metrics) and writes ``xhat_sources.csv`` / ``.md``.

Run the inference reverse chain of a T2Diff checkpoint on N evaluation examples and record, at every reverse step,
the cosine similarity of z0_hat to the true z0 (the drift, or X_{2:n+1} without drift preparation). Writes a CSV and
a PNG to --out.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from t2diff.commands.common import add_progress_arg, add_sampler_args, apply_sampler, command_parser, fail
from t2diff.provenance import provenance, write_json, write_markdown


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "diagnose", "Figure 4: cosine(z0_hat, z0) along T2Diff's reverse chain", __doc__)
    p.add_argument("run_dir", help="a T2Diff run directory (its selected checkpoint) or a .pt file")
    p.add_argument("--users", type=int, default=256, help="number of evaluation examples (one per user)")
    p.add_argument("--out", required=True, help="output folder for the CSV and the PNG")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--seed", type=int, default=0, help="which examples: a seeded random subset of the split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--data", help="prepared dataset (default: the one in the checkpoint's config)")
    p.add_argument("--xhat-sources", nargs="+", metavar="SRC",
                   help="also rank every example of the split with x_hat from each source: chain (as evaluated), "
                   "none, last-item, onestep@R (one step from q(z_R | true z0): sees the target, as in training)")
    add_sampler_args(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from t2diff.data.batching import iterate_batches
    from t2diff.diagnostics import (
        diffusion_cosine_trace,
        diffusion_steps,
        has_diffusion,
        parse_xhat_source,
        write_trace,
        xhat_source_metrics,
    )
    from t2diff.run import build_from_checkpoint, build_split

    prov = provenance()  # the command, commit and machine, taken before anything is written
    if args.users < 1:
        return fail(f"--users must be >= 1, got {args.users}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, cfg, ds = build_from_checkpoint(args.run_dir, args.data)
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e))
    if not has_diffusion(model):
        return fail(f"{args.run_dir} is not a T2Diff run with a diffusion module (model {cfg.model['name']!r})")
    if (err := apply_sampler(model, args)) is not None:
        return fail(err)
    steps = diffusion_steps(model)
    try:
        for src in args.xhat_sources or []:
            parse_xhat_source(src, steps)
    except ValueError as e:
        return fail(str(e))
    split = build_split(cfg, ds)
    ex = split.test if args.split == "test" else split.valid
    if ex is None:
        return fail(f"protocol {cfg.data.protocol!r} has no {args.split} split")
    # a seeded subset rather than the first N: under loo the first N would be the lowest user ids
    n = min(args.users, len(ex))
    pick = np.sort(np.random.default_rng(args.seed).choice(len(ex), size=n, replace=False))
    users, positions = ex.users[pick], ex.positions[pick]
    batches = iterate_batches(ds, users, positions, cfg.data.max_len, args.batch_size)
    total = math.ceil(n / args.batch_size)
    rows = diffusion_cosine_trace(model, tqdm(batches, total=total, desc="diagnose", disable=args.no_progress))
    if not rows:
        return fail("no example with a known target to trace")
    paths = write_trace(rows, args.out)
    meta = {"run": str(args.run_dir), "split": args.split, "protocol": cfg.data.protocol, "examples": n,
            "seed": args.seed, "steps": steps, "sampler": model.sampler.name, "visited_steps": model.reverse_steps,
            "model": cfg.model["name"], "model_config": cfg.model,
            "files": {k: str(v) for k, v in paths.items()}}
    write_json(Path(args.out) / "diagnose.json", meta, prov)
    first, last = rows[0], rows[-1]
    print(f"{n} {args.split} examples, T = {steps}, {model.sampler.name} over {model.reverse_steps} steps: "
          f"cosine(z0_hat, z0) at the last position, mean {first['cos_last_mean']:.4f} (t = T) -> "
          f"{last['cos_last_mean']:.4f} (t = 1); one step from "
          f"q(z_1|z0): {last['onestep_cos_last_mean']:.4f}; chain state: {first['state_cos_last_mean']:.4f} after "
          f"the first step -> {last['state_cos_last_mean']:.4f} after the last; <z0_hat, z0> "
          f"{first['dot_last_mean']:.4f} -> {last['dot_last_mean']:.4f}, |z0_hat| {first['norm_last_mean']:.4f} -> "
          f"{last['norm_last_mean']:.4f} (|z0| {last['z0_norm_mean']:.4f})")
    for p in paths.values():
        print(f"wrote {p}")
    if args.xhat_sources:
        res = xhat_source_metrics(model, ds, ex, cfg.data.max_len, list(cfg.eval.ks), args.xhat_sources,
                                  batch_size=args.batch_size, seed=args.seed)
        for p in _write_xhat(res, Path(args.out), f"{args.run_dir}, {args.split} split, {len(ex)} examples", prov):
            print(f"wrote {p}")
    return 0


def _write_xhat(res: dict[str, dict[str, float]], out: Path, what: str, prov: dict) -> list[Path]:
    import csv

    from t2diff.metrics import is_metric

    cols = sorted({k for m in res.values() for k in m if is_metric(k)},
                  key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    with (out / "xhat_sources.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", *cols, "num_examples"])
        for src, m in res.items():
            w.writerow([src, *(f"{m[c]:.6f}" for c in cols), m["num_examples"]])
    lines = ["# x_hat sources", "", f"{what}; onestep@R sees the target (training's x_hat, an oracle)", "",
             "| x_hat source | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {src} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |" for src, m in res.items()]
    write_markdown(out / "xhat_sources.md", "\n".join(lines) + "\n", prov)
    print("\n".join(lines))
    return [out / "xhat_sources.csv", out / "xhat_sources.md"]
