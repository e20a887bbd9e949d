"""Training throughput of our SASRec on ML-1M, next to its FLOP floor and to RecBole 1.2.1's SASRec, in one run.

For each thread count it times full training steps (forward, backward, Adam) of the ML-1M SASRec config on real
epoch windows (batch 128, L = --max-len, a softmax loss at every position) with

- ``ours``: the default L_TOWER (``losses.chunked_softmax_ce``);
- ``reference``: the same model with the plain full-logit cross-entropy (``losses.full_softmax_ce``), the
  implementation before the chunked one: the ratio is measured in the same run;
- ``sampled``: sampled softmax with 1,024 uniform negatives and logQ correction (``train.loss=sampled``), the
  option for catalogues too large for a full softmax (on 3,706 items it is no cheaper: the encoder dominates).

The FLOP floor: the step's FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward,
matmuls and attention), divided by the rate of a bare matmul of the output layer's shape timed in the same run
(the best these cores do on this work). RecBole: its own SASRec through the peer harness in ../shared/peers/recbole
(``run.py``, anomaly detection off), the same data, threads and a few hundred batches; its ``samples`` are
prefixes with one target each, ours are targets: both count one softmax cross-entropy term.

    .venv/bin/python benchmarks/bench_train.py --recbole-python /tmp/rbvenv/bin/python   # after the peer's setup.sh

Writes benchmarks/results/train.json and train.md (command, commit, machine: t2diff.provenance).
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
from torch.utils.flop_counter import FlopCounterMode

from t2diff import losses
from t2diff.config import load_config
from t2diff.data.batching import make_batch
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
    p.add_argument("--recbole-python", help="the peer venv's python (../shared/peers/recbole/setup.sh)")
    p.add_argument("--recbole-batches", type=int, default=6, help="RecBole training batches (2,048 samples each)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def _steps(model: Any, opt: torch.optim.Optimizer, batches: list[Any]) -> tuple[float, int]:
    """Seconds and targets of the given training steps."""
    n = 0
    t0 = time.perf_counter()
    for b in batches:
        loss, _ = model.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += int((b.pos_targets > 0).sum())
    return time.perf_counter() - t0, n


def step_flops(model: Any, batch: Any) -> int:
    with FlopCounterMode(display=False) as fc:
        loss, _ = model.loss(batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def matmul_rate(n: int, items: int, dim: int, repeats: int = 5) -> float:
    """GFLOP/s of the output layer's three matmuls (logits, d user, d items) at this step's shape."""
    a, b = torch.randn(n, dim), torch.randn(items, dim)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        z = a @ b.T
        _ = z @ b
        _ = z.T @ a
        best = min(best, time.perf_counter() - t0)
    return 3 * 2 * n * items * dim / best / 1e9


def recbole(python: str, threads: int, batches: int) -> dict[str, Any]:
    subprocess.run([python, str(PEER / "make_atomic.py")], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([python, str(PEER / "run.py"), "--epochs", "1", "--max-train-batches", str(batches),
                        "--threads", str(threads), "--no-test-eval", "--out-dir", out], check=True,
                       capture_output=True)
        summary = json.loads(next(Path(out).glob("*.json")).read_text())
    e = summary["epochs"][0]
    return {"samples_per_s": round(e["samples_per_s"], 1), "batches": e["batches"], "samples": e["samples"],
            "train_s": round(e["train_s"], 2)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prov = provenance(argv, __file__)
    cfg = load_config(args.config, [f"data.path={args.data}", f"data.max_len={args.max_len}"])
    rows = []
    for threads in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(threads)
        row: dict[str, Any] = {"threads": threads}
        for name in ("ours", "reference", "sampled"):
            torch.manual_seed(0)
            parts = assemble(cfg if name != "sampled" else load_config(
                args.config, [f"data.path={args.data}", f"data.max_len={args.max_len}", "train.loss=sampled",
                              "train.num_negatives=1024", "train.negative_sampler=uniform"]))
            model = parts.model.train()
            ex = parts.split.train_examples(np.random.default_rng(0), True, args.max_len, 10)
            pick = np.random.default_rng(1).permutation(len(ex))[: 128 * (args.steps + 2)]
            batches = [make_batch(parts.ds, ex.users[pick[s: s + 128]], ex.positions[pick[s: s + 128]],
                                  args.max_len) for s in range(0, len(pick), 128)]
            opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
            if name == "reference":  # the same model with the former loss (an instance attribute wins)
                model.tower_loss = lambda u, t, m=model: losses.full_softmax_ce(u, m.item_embeddings(), t)
            _steps(model, opt, batches[:2])
            sec, targets = _steps(model, opt, batches[2:])
            if name == "ours":
                flops = step_flops(model, batches[2])
                n_targets = int((batches[2].pos_targets > 0).sum())
                rate = matmul_rate(n_targets, parts.ds.num_items, model.item_embeddings().shape[1])
            row[f"{name}_targets_per_s"] = round(targets / sec, 1)
            row[f"{name}_ms_per_step"] = round(1000 * sec / (len(batches) - 2), 1)
        row["step_gflop"] = round(flops / 1e9, 3)
        row["matmul_gflop_per_s"] = round(rate, 1)
        row["floor_ms_per_step"] = round(1000 * flops / 1e9 / rate, 1)
        row["step_over_floor"] = round(row["ours_ms_per_step"] / row["floor_ms_per_step"], 2)
        row["speedup_over_reference"] = round(row["ours_targets_per_s"] / row["reference_targets_per_s"], 2)
        if args.recbole_python:
            rb = recbole(args.recbole_python, threads, args.recbole_batches)
            row["recbole"] = rb
            row["ours_over_recbole"] = round(row["ours_targets_per_s"] / rb["samples_per_s"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"config": args.config, "max_len": args.max_len, "batch": "128 windows, loss at every position",
            "steps": args.steps}
    write_json(args.out / "train.json", {"meta": meta, "rows": rows}, prov)
    md = ["# Training throughput: SASRec on ML-1M", "",
          f"Config `{args.config}`, L = {args.max_len}, batches of 128 epoch windows; {args.steps} timed steps after"
          " 2 warm-up steps. Targets = softmax cross-entropy terms (RecBole: samples, one target each). Floor = "
          "the step's counted FLOPs at the same-run matmul rate of the output layer's shape.", "",
          markdown_table(
              ["threads", "ours targets/s", "ms/step", "reference (full logits) targets/s", "speed-up",
               "sampled softmax targets/s", "step GFLOP", "matmul GFLOP/s", "floor ms/step", "step / floor",
               "RecBole samples/s", "ours / RecBole"],
              [[r["threads"], r["ours_targets_per_s"], r["ours_ms_per_step"], r["reference_targets_per_s"],
                f"{r['speedup_over_reference']}x", r["sampled_targets_per_s"], r["step_gflop"],
                r["matmul_gflop_per_s"], r["floor_ms_per_step"], r["step_over_floor"],
                r.get("recbole", {}).get("samples_per_s", "-"), r.get("ours_over_recbole", "-")] for r in rows])]
    write_markdown(args.out / "train.md", "\n".join(md) + "\n", prov)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
