"""How much the tie rule moves a run's numbers: its test (and validation) metrics under the pessimistic rule that
the evaluator uses now and under the optimistic rule used before (rank = 1 + #items scored strictly higher).

For each run directory (or .pt) it ranks the protocol's examples with the checkpoint that `t2diff evaluate`
uses and writes one row per (run, split): metrics under both rules, their largest difference, and the number
of examples whose target tied with another item. Writes ``<out>/<name>.md`` and ``.json`` (with the command,
commit and machine: t2diff.provenance).

    .venv/bin/python benchmarks/tie_audit.py runs/sasrec-ml1m-loo runs/t2diff-serve --name tie_audit
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2diff.checkpoint import resolve
from t2diff.data.batching import make_batch
from t2diff.evaluate import rank_examples
from t2diff.metrics import TIE_RULE, is_metric, metrics_from_ranks
from t2diff.provenance import provenance, write_json, write_markdown
from t2diff.run import build_from_checkpoint, build_split


@torch.no_grad()
def optimistic_ranks(model: Any, ds: Any, ex: Any, max_len: int, batch_size: int = 512) -> np.ndarray:
    """The former rule, kept here only as the reference to compare against."""
    items = model.item_embeddings()
    out = np.empty(len(ex), dtype=np.int64)
    for s in range(0, len(ex), batch_size):
        b = make_batch(ds, ex.users[s: s + batch_size], ex.positions[s: s + batch_size], max_len)
        scores = model.user_embeddings(b) @ items.T
        scores[:, 0] = -torch.inf
        t = scores.gather(1, b.target[:, None])
        out[s: s + len(b)] = (1 + (scores > t).sum(dim=1)).numpy()
    return out


def audit(run: Path, ks: list[int] | None) -> list[dict[str, Any]]:
    model, cfg, ds = build_from_checkpoint(run)
    split = build_split(cfg, ds)
    ks = ks or list(cfg.eval.ks)
    rows = []
    for name, ex in (("valid", split.valid), ("test", split.test)):
        if ex is None:
            continue
        res = rank_examples(model, ds, ex, cfg.data.max_len)
        new = res.metrics(ks)
        old = metrics_from_ranks(optimistic_ranks(model, ds, ex, cfg.data.max_len), ks)
        diff = max(abs(old[k] - new[k]) for k in old if is_metric(k))
        rows.append({"run": str(run), "checkpoint": str(resolve(run)), "model": cfg.model["name"],
                     "protocol": cfg.data.protocol, "split": name, "examples": len(ex),
                     "tied_targets": new["num_tied_targets"], "nonfinite_targets": new["num_nonfinite_targets"],
                     "max_abs_metric_change": diff, "pessimistic": {k: v for k, v in new.items() if is_metric(k)},
                     "optimistic": old})
    return rows


def main(argv: list[str] | None = None) -> int:
    prov = provenance(argv, __file__)  # before anything is written: the outputs are tracked files
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--ks", type=int, nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="tie_audit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [r for run in args.runs for r in audit(run, args.ks)]
    write_json(args.out / f"{args.name}.json", {"tie_rule": TIE_RULE, "rows": rows}, prov)
    lines = ["# Tie rule audit: pessimistic (now) vs optimistic (before) ranks on the same checkpoints", "",
             f"Tie rule: {TIE_RULE}", "",
             "| run | model | protocol | split | examples | tied targets | non-finite targets | "
             "largest metric change |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['run']}` | {r['model']} | {r['protocol']} | {r['split']} | {r['examples']} | "
                     f"{r['tied_targets']} | {r['nonfinite_targets']} | {r['max_abs_metric_change']:.2e} |")
    write_markdown(args.out / f"{args.name}.md", "\n".join(lines), prov)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
