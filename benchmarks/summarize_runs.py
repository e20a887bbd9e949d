"""Summarise the per-epoch logs (metrics.jsonl) of a set of runs, finished or not, into one Markdown table + CSV.

`t2diff compare --no-train` tabulates finished runs only; this reads what every run logged so far, so runs
stopped at a time limit are still reported, each row saying how many epochs it ran and which epoch a number
comes from:

- paper protocol (test evaluated every epoch, no validation): the last epoch's test metrics, the test metrics at
  a common epoch E (the same budget for every run: E = --at, default the fewest epochs any run reached), and the
  maximum over epochs (the authors' reporting: selected on the test set, optimistic, labelled as such);
- loo (validation every epoch): the best validation epoch so far and its validation metrics; the test metrics
  only where the run finished (metrics.json, test at the selected epoch).

    .venv/bin/python benchmarks/summarize_runs.py RUNS_DIR [RUNS_DIR ...] --out benchmarks/results/NAME
    (RUNS_DIR = a folder of run folders, e.g. runs/gpu/paper/runs)

OUT.md and OUT.csv say the command, commit and machine (t2diff.provenance; the CSV in "# " lines on top).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from t2diff.provenance import provenance, write_csv, write_markdown


def load(run: Path) -> dict[str, Any]:
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    done = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else None
    # compare's layout is <group>/runs/<run>; a plain folder of runs (<group>/<run>) is named by itself
    group = run.parent.parent.name if run.parent.name == "runs" else run.parent.name
    return {"name": run.name, "group": group, "hist": hist, "done": done}


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def summarise(runs: list[dict[str, Any]], metrics: list[str], select: str, at: int | None) -> list[dict[str, Any]]:
    rows = []
    paper_runs = [r for r in runs if r["hist"] and "test" in r["hist"][0]]
    common = at or (min(len(r["hist"]) for r in paper_runs) if paper_runs else None)
    for r in runs:
        h = r["hist"]
        if not h:
            continue
        row: dict[str, Any] = {"group": r["group"], "run": r["name"], "epochs": len(h),
                               "finished": r["done"] is not None}
        if "test" in h[0]:  # paper protocol
            row["protocol"] = "paper"
            for m in metrics:
                row[f"last:{m}"] = h[-1]["test"].get(m)
                row[f"at{common}:{m}"] = h[common - 1]["test"].get(m) if common and len(h) >= common else None
                row[f"max:{m}"] = max(e["test"].get(m, float("-inf")) for e in h)
        else:  # loo: validation every epoch
            row["protocol"] = "loo"
            best = max(range(len(h)), key=lambda i: h[i]["valid"][select])
            row["best_valid_epoch"] = h[best]["epoch"]
            for m in metrics:
                row[f"valid:{m}"] = h[best]["valid"].get(m)
                row[f"test:{m}"] = r["done"]["test"].get(m) if r["done"] else None
        row["train_s_per_epoch"] = round(sum(e.get("train_seconds", 0.0) for e in h) / len(h), 1)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """One table per protocol and per kind of number (last / same-budget / max; best-valid / test)."""
    out = ["# Runs summarised from their per-epoch logs (metrics.jsonl)", ""]
    for proto in ("paper", "loo"):
        sel = [r for r in rows if r["protocol"] == proto]
        if not sel:
            continue
        if proto == "paper":
            at = next(k.split(":")[0] for k in sel[0] if k.startswith("at"))
            cols = [(at, f"test at epoch {at[2:]} (the same budget for every run)"),
                    ("last", "test at each run's last epoch"),
                    ("max", "max over epochs of the test metric (the authors' reporting: test-selected, optimistic)")]
        else:
            cols = [("valid", "validation metrics at the best validation epoch so far"),
                    ("test", "test metrics at the selected epoch (finished runs only)")]
        out += [f"## protocol `{proto}`", ""]
        for key, label in cols:
            head = ["group", "run", "epochs run", "finished"] + (["best valid epoch"] if proto == "loo" else [])
            head += metrics + ["train s/epoch"]
            out += [f"### {label}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in sel:
                vals = [r["group"], r["run"], str(r["epochs"]), "yes" if r["finished"] else "no (stopped)"]
                if proto == "loo":
                    vals.append(str(r["best_valid_epoch"]))
                vals += [fmt(r.get(f"{key}:{m}")) for m in metrics]
                vals.append(str(r["train_s_per_epoch"]))
                out.append("| " + " | ".join(vals) + " |")
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    prov = provenance(argv, __file__)  # before anything is written: the outputs may be tracked files
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs_dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.csv")
    ap.add_argument("--metrics", default="recall@2,recall@20,mrr@2,mrr@20,ndcg@10")
    ap.add_argument("--select", default="ndcg@10", help="loo: validation metric that picks the best epoch")
    ap.add_argument("--at", type=int, help="paper: the common epoch (default: the fewest epochs any run reached)")
    a = ap.parse_args(argv)
    metrics = a.metrics.split(",")
    runs = [load(p) for d in a.runs_dirs for p in sorted(d.iterdir()) if (p / "metrics.jsonl").exists()]
    rows = summarise(runs, metrics, a.select, a.at)
    write_markdown(a.out.with_suffix(".md"), markdown(rows, metrics), prov)
    write_csv(a.out.with_suffix(".csv"), rows, prov)
    print(markdown(rows, metrics))


if __name__ == "__main__":
    main()
