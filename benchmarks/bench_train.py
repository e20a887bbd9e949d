"""Training throughput of our SASRec on ML-1M, next to its FLOP floor and to RecBole 1.2.1's SASRec, in one run.

For each thread count it times full training steps (forward, backward, Adam) of the ML-1M SASRec config on real
epoch windows (batch 128, L = --max-len, a softmax loss at every position) with

- ``ours``: the default L_TOWER (``losses.chunked_softmax_ce``);
- ``reference``: the same model with the plain full-logit cross-entropy (``losses.full_softmax_ce``), the
  implementation before the chunked one: the ratio is measured in the same run;
- ``torch dropout``: ours with ``torch.nn.functional.dropout``'s Bernoulli draws (the dropout before
  ``t2diff.models.dropout``), fp32;
- ``bf16``: ours under ``train.precision=bf16`` (bfloat16 autocast, float32 softmax and optimiser);
- ``sampled``: sampled softmax with 1,024 uniform negatives and logQ correction (``train.loss=sampled``), the
  option for catalogues too large for a full softmax (on 3,706 items it is no cheaper: the encoder dominates).

The FLOP floor: the step's FLOPs counted by ``t2diff.flops.count_flops`` (torch's ``FlopCounterMode``, forward +
backward, matmuls and attention, plus the in-place ``addmm_`` torch's counter leaves out: the chunked cross-entropy's
item gradient, a third of its FLOPs; before session 10 the floors here were taken without it), divided by the
rate of a bare matmul of the output layer's shape timed in the same run (the best these cores do on this work).
RecBole: its own SASRec through the peer harness in ../shared/peers/recbole
(``run.py``, anomaly detection off), the same data, threads and a few hundred batches; its ``samples`` are
prefixes with one target each, ours are targets: both count one softmax cross-entropy term.

    .venv/bin/python benchmarks/bench_train.py --recbole-python /tmp/rbvenv/bin/python   # after the peer's setup.sh
    .venv/bin/python benchmarks/bench_train.py --config configs/ml-1m/sasrec-200.yaml --max-len 200 --name train_200

``--profile`` adds each variant's top operators (self CPU share, torch.profiler) at the last thread count.
Writes benchmarks/results/<name>.json and <name>.md (command, commit, machine: t2diff.provenance).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2diff import losses, runtime
from t2diff.config import load_config
from t2diff.data.batching import make_batch
from t2diff.flops import count_flops
from t2diff.models import dropout as dropout_mod
from t2diff.precision import autocast
from t2diff.provenance import markdown_table, provenance, write_json, write_markdown
from t2diff.run import assemble

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peers" / "recbole"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "ml-1m" / "sasrec.yaml"))
    p.add_argument("--data", default="cache/ml-1m")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--steps", type=int, default=12, help="timed steps per measurement (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=3,
                   help="time the steps this many times and keep the fastest (as the matmul rate is the best of 5)")
    p.add_argument("--recbole-python", help="the peer venv's python (../shared/peers/recbole/setup.sh)")
    p.add_argument("--recbole-batches", type=int, default=6, help="RecBole training batches (2,048 samples each)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="train", help="output file stem")
    p.add_argument("--profile", action="store_true", help="profile each variant's steps (top operators)")
    p.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                   help="tuned: t2diff.runtime.tune_allocator(), as the CLI and Trainer run; default: glibc's "
                   "own thresholds (the setting before it; run once each to compare)")
    return p.parse_args(argv)


def _steps(model: Any, opt: torch.optim.Optimizer, batches: list[Any], precision: str = "fp32"
           ) -> tuple[float, int]:
    """Seconds and targets of the given training steps."""
    n = 0
    t0 = time.perf_counter()
    for b in batches:
        with autocast(precision, "cpu"):
            loss, _ = model.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += int((b.pos_targets > 0).sum())
    return time.perf_counter() - t0, n


def step_flops(model: Any, batch: Any) -> int:
    def step() -> None:
        loss, _ = model.loss(batch)
        loss.backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops


def profile_top(model: Any, opt: torch.optim.Optimizer, batches: list[Any], precision: str, top: int = 8
                ) -> list[list[Any]]:
    """[operator, self CPU %] of the steps' top operators."""
    from torch.profiler import profile

    with profile() as prof:
        _steps(model, opt, batches, precision)
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1
    return [[e.key, round(100 * e.self_cpu_time_total / total, 1)] for e in ev[:top]]


def matmul_rate(n: int, items: int, dim: int, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of the output layer's three matmuls (logits, d user, d items) at this step's shape."""
    a, b = torch.randn(n, dim, dtype=dtype), torch.randn(items, dim, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        z = a @ b.T
        _ = z @ b
        _ = z.T @ a
        best = min(best, time.perf_counter() - t0)
    return 3 * 2 * n * items * dim / best / 1e9


def recbole(python: str, threads: int, batches: int, max_len: int = 50) -> dict[str, Any]:
    """RecBole's SASRec through the peer harness, its history length set to ``max_len`` (the peer's config has
    MAX_ITEM_LIST_LENGTH 50)."""
    subprocess.run([python, str(PEER / "make_atomic.py")], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as out:
        conf = Path(out) / "sasrec.yaml"
        text = (PEER / "sasrec.yaml").read_text()
        if "MAX_ITEM_LIST_LENGTH: 50" not in text:
            raise RuntimeError(f"{PEER / 'sasrec.yaml'} no longer sets MAX_ITEM_LIST_LENGTH: 50")
        conf.write_text(text.replace("MAX_ITEM_LIST_LENGTH: 50", f"MAX_ITEM_LIST_LENGTH: {max_len}"))
        subprocess.run([python, str(PEER / "run.py"), "--epochs", "1", "--max-train-batches", str(batches),
                        "--threads", str(threads), "--no-test-eval", "--out-dir", out, "--config", str(conf)],
                       check=True, capture_output=True)
        summary = json.loads(next(Path(out).glob("*.json")).read_text())
    e = summary["epochs"][0]
    return {"samples_per_s": round(e["samples_per_s"], 1), "batches": e["batches"], "samples": e["samples"],
            "train_s": round(e["train_s"], 2)}


VARIANTS = ("ours", "torch_dropout", "bf16", "reference", "sampled")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prov = provenance(argv, __file__)
    if args.allocator == "tuned":
        runtime.tune_allocator()
    base = [f"data.path={args.data}", f"data.max_len={args.max_len}", "train.precision=fp32"]
    cfg = load_config(args.config, base)
    threads_list = [int(x) for x in args.threads.split(",")]
    rows, profiles = [], {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        row: dict[str, Any] = {"threads": threads}
        for name in VARIANTS:
            torch.manual_seed(0)
            parts = assemble(cfg if name != "sampled" else load_config(
                args.config, [*base, "train.loss=sampled", "train.num_negatives=1024",
                              "train.negative_sampler=uniform"]))
            model = parts.model.train()
            ex = parts.split.train_examples(np.random.default_rng(0), True, args.max_len, 10)
            pick = np.random.default_rng(1).permutation(len(ex))[: 128 * (args.steps + 2)]
            batches = [make_batch(parts.ds, ex.users[pick[s: s + 128]], ex.positions[pick[s: s + 128]],
                                  args.max_len) for s in range(0, len(pick), 128)]
            opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
            if name == "reference":  # the same model with the former loss (an instance attribute wins)
                model.tower_loss = lambda u, t, m=model: losses.full_softmax_ce(u, m.item_embeddings(), t)
            precision = "bf16" if name == "bf16" else "fp32"
            dropout_mod.USE_TORCH_DROPOUT = name in ("torch_dropout", "reference")
            try:
                _steps(model, opt, batches[:2], precision)
                # the fastest of --repeats passes: this machine's page reclaim and neighbours slow single passes
                sec, targets = min((_steps(model, opt, batches[2:], precision) for _ in range(args.repeats)),
                                   key=lambda r: r[0])
                if args.profile and threads == threads_list[-1]:
                    profiles[name] = profile_top(model, opt, batches[2:6], precision)
            finally:
                dropout_mod.USE_TORCH_DROPOUT = False
            if name == "ours":
                flops = step_flops(model, batches[2])
                n_targets = int((batches[2].pos_targets > 0).sum())
                dim = model.item_embeddings().shape[1]
                rate = matmul_rate(n_targets, parts.ds.num_items, dim)
                rate_bf16 = matmul_rate(n_targets, parts.ds.num_items, dim, dtype=torch.bfloat16)
            row[f"{name}_targets_per_s"] = round(targets / sec, 1)
            row[f"{name}_ms_per_step"] = round(1000 * sec / (len(batches) - 2), 1)
        row["step_gflop"] = round(flops / 1e9, 3)
        row["matmul_gflop_per_s"] = round(rate, 1)
        row["matmul_bf16_gflop_per_s"] = round(rate_bf16, 1)
        row["floor_ms_per_step"] = round(1000 * flops / 1e9 / rate, 1)
        row["step_over_floor"] = round(row["ours_ms_per_step"] / row["floor_ms_per_step"], 2)
        row["floor_bf16_ms_per_step"] = round(1000 * flops / 1e9 / rate_bf16, 1)
        row["bf16_step_over_bf16_floor"] = round(row["bf16_ms_per_step"] / row["floor_bf16_ms_per_step"], 2)
        row["speedup_over_reference"] = round(row["ours_targets_per_s"] / row["reference_targets_per_s"], 2)
        row["speedup_over_torch_dropout"] = round(row["ours_targets_per_s"] / row["torch_dropout_targets_per_s"], 2)
        row["bf16_speedup"] = round(row["bf16_targets_per_s"] / row["ours_targets_per_s"], 2)
        if args.recbole_python:
            rb = recbole(args.recbole_python, threads, args.recbole_batches, args.max_len)
            row["recbole"] = rb
            row["ours_over_recbole"] = round(row["ours_targets_per_s"] / rb["samples_per_s"], 1)
            row["bf16_over_recbole"] = round(row["bf16_targets_per_s"] / rb["samples_per_s"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"config": str(Path(args.config).resolve().relative_to(REPO)) if Path(args.config).resolve()
            .is_relative_to(REPO) else args.config, "max_len": args.max_len,
            "batch": "128 windows, loss at every position", "steps": args.steps, "repeats": args.repeats,
            "allocator": runtime.allocator_state()}
    write_json(args.out / f"{args.name}.json", {"meta": meta, "rows": rows, "profiles": profiles}, prov)
    md = [f"# Training throughput: SASRec on ML-1M, L = {args.max_len}", "",
          f"Config `{meta['config']}` (precision forced to fp32 except the bf16 column), L = {args.max_len}, "
          f"batches of 128 epoch windows; {args.steps} timed steps after 2 warm-up steps, the fastest of "
          f"{args.repeats} such passes; allocator: "
          f"{meta['allocator']}. Targets = softmax "
          "cross-entropy terms (RecBole: samples, one target each, its MAX_ITEM_LIST_LENGTH set to the same L). "
          "Floor = the step's counted FLOPs (t2diff.flops: in-place matmuls included) at the "
          "same-run rate of a bare matmul of the output layer's shape (fp32; for bf16, a bf16 matmul). `torch "
          "dropout` = ours with torch's Bernoulli dropout (the code before t2diff.models.dropout); `reference` = "
          "that, with the full-logit cross-entropy.", "",
          markdown_table(
              ["threads", "ours fp32 targets/s", "ms/step", "step / floor", "torch dropout targets/s",
               "reference targets/s", "ours / reference", "bf16 targets/s", "bf16 ms/step", "bf16 / fp32",
               "bf16 step / bf16 floor", "sampled targets/s", "step GFLOP", "matmul GFLOP/s fp32 / bf16",
               "floor ms fp32 / bf16", "RecBole samples/s", "ours / RecBole (fp32, bf16)"],
              [[r["threads"], r["ours_targets_per_s"], r["ours_ms_per_step"], r["step_over_floor"],
                r["torch_dropout_targets_per_s"], r["reference_targets_per_s"], f"{r['speedup_over_reference']}x",
                r["bf16_targets_per_s"], r["bf16_ms_per_step"], f"{r['bf16_speedup']}x",
                r["bf16_step_over_bf16_floor"], r["sampled_targets_per_s"], r["step_gflop"],
                f"{r['matmul_gflop_per_s']} / {r['matmul_bf16_gflop_per_s']}",
                f"{r['floor_ms_per_step']} / {r['floor_bf16_ms_per_step']}",
                r.get("recbole", {}).get("samples_per_s", "-"),
                f"{r['ours_over_recbole']}, {r['bf16_over_recbole']}" if "recbole" in r else "-"]
               for r in rows])]
    if profiles:
        md += ["", f"Profile ({threads_list[-1]} threads, 4 steps; self CPU %, top operators):", ""]
        md += [markdown_table(["variant", "top operators"],
                              [[k, ", ".join(f"{op} {pct}" for op, pct in v)] for k, v in profiles.items()])]
    write_markdown(args.out / f"{args.name}.md", "\n".join(md) + "\n", prov)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
