"""The converged leave-one-out table on ML-1M: each run's selected epoch, test metrics with seen items masked
(as the run evaluated) and not masked, epochs and wall time, beside the published numbers; and a PNG of
validation NDCG@10 against wall time per model.

    bash benchmarks/cpu_converge.sh            # trains (or resumes) runs/<model>-200 for every model
    .venv/bin/python benchmarks/converged_loo.py runs/sasrec-200 runs/gru4rec-200 runs/bert4rec-200 \\
        runs/caser-200 runs/dat-200

Writes benchmarks/results/converged_loo.{md,json,png} (command, commit, machine: t2diff.provenance). Rows of
models not given here are kept from the existing converged_loo.json, each with the provenance of the invocation
that measured it (``--fresh`` drops them): a 2-core session cannot train all five to convergence, so the table
is filled model by model and every row says where it came from. ``--label TEXT`` marks the given runs as a labelled
variant of their model (e.g. a recipe change that is not the official code's): they get a row of their own,
"<model> (<label>)", beside the model's unlabelled row instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from t2diff.evaluate import rank_examples
from t2diff.provenance import machine_line, markdown_table, provenance, write_json, write_markdown
from t2diff.run import build_from_checkpoint, build_split

# Published full-ranking LOO numbers on ML-1M (../shared/research/README.md §1) and how their protocol differs.
PUBLISHED: dict[str, tuple[str, str]] = {
    "sasrec": ("HR@10 0.3152, NDCG@10 0.1821", "Klenitskiy & Vasilev RecSys'23 SASRec+ (CE), max_len 200, masked"),
    "bert4rec": ("HR@10 0.2843, NDCG@10 0.1537", "same paper, max_len 200, masked, 197 epochs"),
    "gru4rec": ("HR@10 0.2776", "RecBole benchmark: ratings >= 3, 10-core filter, history 50, not masked"),
    "caser": ("HR@10 0.2039", "RecBole benchmark: ratings >= 3, 10-core filter, not masked"),
    "dat": ("-", "no published number on this protocol"),
    # Own papers' ML-1M numbers, read from secondary quotes (the paper tables themselves were not reachable here):
    # Mamba4Rec arXiv v1 as quoted in github.com/chengkai-liu/Mamba4Rec/issues/3; DiffuRec TOIS Table 2 as quoted
    # in github.com/kisylik811-star/diffurec-distillation (consistency_diffurec/literature_baselines.py).
    "mamba4rec": ("HR@10 0.3121, NDCG@10 0.1822 (v1, quoted)",
                  "RecBole LOO, max_len 200, 5-core, not masked (official config.yaml)"),
    "diffurec": ("HR@10 0.2626, NDCG@10 0.1479 (Table 2, quoted)",
                 "raw ML-1M LOO, max_len 50, not masked, every prefix trained (official code)"),
    "stosa": ("-", "none found: its README and data are Amazon only (paper tables not read)"),
    "contrastvae": ("-", "none found: its README and data are Amazon only (paper tables not read)"),
}
KS = [10, 20]


def row_of(run: Path, label: str | None = None) -> dict[str, Any]:
    out = json.loads((run / "metrics.json").read_text())
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    model, cfg, ds = build_from_checkpoint(run)
    torch.set_num_threads(2)
    test = build_split(cfg, ds).test
    masked = rank_examples(model, ds, test, cfg.data.max_len, mask_seen=True).metrics(KS)
    unmasked = rank_examples(model, ds, test, cfg.data.max_len, mask_seen=False).metrics(KS)
    wall, curve = 0.0, []
    for h in hist:
        wall += h["seconds"]
        curve.append((wall / 60, h["valid"]["ndcg@10"]))
    base = cfg.model["name"]
    name = base if not label else f"{base} ({label})"
    t = cfg.train
    recipe = f"lr {t.lr:g}, batch {t.batch_size}, {t.precision}" + (
        f", lr x{t.lr_plateau_factor:g} after {t.lr_plateau_patience} flat epochs" if t.lr_plateau_patience else "")
    e = cfg.eval
    selection = (f"valid {t.select_metric} {'masked' if e.mask_seen else 'unmasked'}, patience {t.patience}")
    test_users = "all" if e.max_users is None else f"{len(test)} sampled (seed {e.user_sample_seed})"
    return {"run": str(run), "recipe": recipe, "model": name, "max_len": cfg.data.max_len,
            "selection": selection, "test_users": test_users,
            "epochs_run": out["epochs_run"],
            "selected_epoch": out.get("selected_epoch"), "wall_minutes": round(wall / 60, 1),
            "stopped": out.get("stopped", "early stopping" if out["epochs_run"] < cfg.train.epochs else "epochs"),
            "test_masked": masked, "test_unmasked": unmasked, "curve": curve,
            "base_model": base,
            "published": PUBLISHED.get(base, ("-", ""))[0], "published_protocol": PUBLISHED.get(base, ("", "-"))[1]}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        xs, ys = zip(*r["curve"], strict=True)
        ax.plot(xs, ys, marker=".", label=f"{r['model']} (L {r['max_len']})")
    ax.set_xlabel("wall time (minutes, 2-core CPU; training + per-epoch validation)")
    ax.set_ylabel("validation NDCG@10 (masked or not: the run's selection, table)")
    ax.set_title("ML-1M leave-one-out")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--fresh", action="store_true", help="drop the rows of models not given here")
    p.add_argument("--label", default=None, help="these runs are a labelled variant: rows of their own")
    args = p.parse_args(argv)
    prov = provenance(argv, __file__)
    new = [{**row_of(r, args.label), "provenance": prov} for r in args.runs if (r / "metrics.json").exists()]
    old_file = args.out / "converged_loo.json"
    kept = []
    if old_file.exists() and not args.fresh:
        given = {r["model"] for r in new}
        kept = [r for r in json.loads(old_file.read_text())["rows"] if r["model"] not in given]
    order = list(PUBLISHED)
    def rank(r: dict[str, Any]) -> tuple[int, int]:  # by model, a labelled variant right after its model's row
        base = r.get("base_model", r["model"])
        return (order.index(base) if base in order else len(order), int(base != r["model"]))

    rows = sorted([*kept, *new], key=rank)
    write_json(args.out / "converged_loo.json", {"rows": rows}, prov)
    plot(rows, args.out / "converged_loo.png")
    md = ["# Converged leave-one-out on ML-1M (2-core CPU)", "",
          "Test metrics of each run's selected epoch (its selection rule in the table), ranked over all 3,706 "
          "items, with seen items masked (as the references) and not; wall time = training plus per-epoch "
          "validation. Curve: `converged_loo.png`.", "",
          markdown_table(
              ["model", "L", "epochs", "selected", "selection", "wall min", "stopped by", "test users",
               "masked HR@10", "masked NDCG@10", "unmasked HR@10", "unmasked NDCG@10", "published", "their protocol",
               "recipe"],
              [[r["model"], r["max_len"], r["epochs_run"], r["selected_epoch"],
                # rows measured before the column existed: their configs' rule (configs/ml-1m/<model>-200.yaml)
                r.get("selection", "valid ndcg@10 masked, patience 10"), r["wall_minutes"], r["stopped"],
                r.get("test_users", "all"),
                f"{r['test_masked']['recall@10']:.4f}", f"{r['test_masked']['ndcg@10']:.4f}",
                f"{r['test_unmasked']['recall@10']:.4f}", f"{r['test_unmasked']['ndcg@10']:.4f}", r["published"],
                r["published_protocol"], r.get("recipe", "(not recorded)")] for r in rows]), "",
          "Where each row came from (rows are measured model by model; resumed runs count all their epochs):", "",
          markdown_table(["model", "measured", "commit", "command", "machine"],
                         [[r["model"], r["provenance"]["date"], r["provenance"]["commit"],
                           f"`{r['provenance']['command']}`", machine_line(r["provenance"]["machine"])]
                          for r in rows])]
    write_markdown(args.out / "converged_loo.md", "\n".join(md) + "\n", prov)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
