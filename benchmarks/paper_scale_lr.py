"""One Table 2 from several ``t2diff reproduce`` passes that differ only in the learning rate: for each row, the lr
whose run has the lowest training loss in its last epoch (training data only: no test number enters the choice),
then the paper's orderings on the chosen rows with paired z on the runs' own test ranks.

    .venv/bin/python benchmarks/paper_scale_lr.py --study table2-paper-paper \\
        --pass 0.001=runs/reproduce-ml-1m-paperscale --pass 0.01=runs/reproduce-ml-1m-paperscale-lr0.01 \\
        --pass 0.03=runs/reproduce-ml-1m-paperscale-lr0.03 --name paper_scale_lr

Each pass folder holds the reproduce.json its run wrote. A row whose run did not finish, or whose last loss is not
finite, is not chosen at that lr. ``--prior LR=FILE`` takes one lr's last losses and test values from an earlier
output JSON of this script, for a pass whose run folders are gone; a row chosen at such an lr has no test ranks, so
its orderings use unpaired binomial standard errors, and say so. Writes ``benchmarks/results/<name>.md`` and
``.json`` (command, commit, machine).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from t2diff.compare.paper import paper_table2
from t2diff.config import load_config
from t2diff.paired import paired, per_example
from t2diff.provenance import markdown_table, provenance, write_json, write_markdown
from t2diff.reproduce.report import BASELINES, compare_pair, headline
from t2diff.run_ranks import cached_test_ranks


def last_loss(run: Path) -> float:
    """The training loss of the run's last logged epoch (metrics.jsonl); nan when there is none."""
    f = run / "metrics.jsonl"
    if not (run / "metrics.json").exists() or not f.exists():
        return math.nan
    lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return float(lines[-1].get("train_loss", math.nan)) if lines else math.nan


def rows_of(folder: Path, study: str) -> dict[str, dict]:
    data = json.loads((folder / "reproduce.json").read_text())
    return {r["method"]: r for r in data["studies"][study]["rows"]}


def prior_rows(file: Path, lr: str, metric: str) -> dict[str, dict]:
    """One lr's rows from an earlier output JSON of this script: {method: {run_dir, last_loss, test}}."""
    data = json.loads(file.read_text())
    if data.get("metric") != metric:
        raise SystemExit(f"{file}: metric {data.get('metric')!r}, not {metric!r}")
    out = {}
    for m, rec in data["rows"].items():
        if lr not in rec["last_loss"]:
            raise SystemExit(f"{file}: row {m!r} has no lr {lr}; it has {sorted(rec['last_loss'])}")
        out[m] = {"run_dir": None, "last_loss": rec["last_loss"][lr], "test": {metric: rec["test"].get(lr)}}
    return out


def choose(passes: dict[str, dict[str, dict]]) -> dict[str, tuple[str | None, dict[str, float]]]:
    """{method: (chosen lr or None, {lr: last loss})}: the lowest finite last-epoch training loss."""
    methods = list(dict.fromkeys(m for rows in passes.values() for m in rows))
    out = {}
    for m in methods:
        losses = {lr: float(rows[m]["last_loss"]) if "last_loss" in rows[m] else last_loss(Path(rows[m]["run_dir"]))
                  for lr, rows in passes.items() if m in rows}
        finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
        out[m] = (min(finite, key=finite.get) if finite else None, losses)
    return out


def hits(run: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-example metric, example keys) from the run's test ranks at its own eval.mask_seen."""
    r = cached_test_ranks(run)
    masked = load_config(run / "config.yaml").eval.mask_seen
    keys = np.stack([r.users, r.positions], axis=1)
    return per_example(r.ranks(masked), (metric,))[metric], keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", default="table2-paper-paper")
    p.add_argument("--pass", dest="passes", action="append", required=True, help="LR=FOLDER (repeat)")
    p.add_argument("--prior", action="append", default=[], help="LR=JSON: that lr from an earlier output (repeat)")
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="paper_scale_lr")
    args = p.parse_args(argv)
    prov = provenance(argv, __file__)
    passes = {}
    for item in args.passes:
        lr, _, folder = item.partition("=")
        passes[lr] = rows_of(Path(folder), args.study)
    protocol = "paper" if "-paper-" in args.study else "loo"
    h = headline(args.dataset, protocol)
    for item in args.prior:
        lr, _, file = item.partition("=")
        passes[lr] = prior_rows(Path(file), lr, h)
    passes = dict(sorted(passes.items(), key=lambda kv: float(kv[0])))
    paper = paper_table2(args.dataset) if protocol == "paper" else {}
    chosen = choose(passes)
    lrs = list(passes)
    table, record = [], {}
    for m, (lr, losses) in chosen.items():
        tests = {x: (passes[x].get(m, {}).get("test") or {}).get(h) for x in lrs}
        row = passes[lr][m] if lr else None
        val = (row["test"] or {}).get(h) if row else None
        pv = paper[m].metrics.get(h) if m in paper else None
        table.append([m, *[f"{losses.get(x, math.nan):.4f}" for x in lrs],
                      *["" if tests[x] is None else f"{tests[x]:.4f}" for x in lrs], lr or "none",
                      "" if val is None else f"{val:.4f}", "" if pv is None else f"{pv:.4f}"])
        record[m] = {"chosen_lr": lr, "last_loss": losses, "test": tests, "chosen_test": val, "paper": pv,
                     "run_dir": row["run_dir"] if row else None}

    def run_of(m: str | None) -> Path | None:
        return Path(record[m]["run_dir"]) if m in record and record[m]["run_dir"] else None  # None: prior lr

    def z_line(a: str, b: str | None, rule: str = ">") -> str:
        ra, rb = run_of(a), run_of(b)
        if ra is None or rb is None:  # a prior lr's row: no ranks, so unpaired binomial SE on the same n
            va, vb = record.get(a, {}).get("chosen_test"), record.get(b, {}).get("chosen_test") if b else None
            return f"- {a} > {b}: {compare_pair(va, vb, num_test, rule)}"
        (ha, ka), (hb, kb) = hits(ra, h), hits(rb, h)
        if not np.array_equal(ka, kb):
            return f"- {a} > {b}: the runs hold different test examples; not paired"
        pr = paired(ha, hb)
        ok = pr["z"] >= 2
        return (f"- {a} > {b}: {'holds' if ok else 'does not hold'} ({ha.mean():.4f} vs {hb.mean():.4f}, "
                f"{pr['diff']:+.4f} ± {pr['se']:.4f}, z {pr['z']:+.2f}, paired)")

    with_ranks = [Path(r["run_dir"]) for r in record.values() if r["run_dir"]]
    num_test = len(hits(with_ranks[0], h)[0]) if with_ranks else None
    base = [(m, record[m]["chosen_test"]) for m in BASELINES if m in record and record[m]["chosen_test"] is not None]
    best = max(base, key=lambda x: x[1])[0] if base else None
    orderings = [z_line("T2Diff", "Mixed-attention"), z_line("Mixed-attention", best), z_line("T2Diff", best)]
    if "T2DiffCausal (ours)" in record:
        orderings.append(z_line("T2DiffCausal (ours)", best))
    head = ["method", *[f"last loss, lr {x}" for x in lrs], *[f"{h}, lr {x}" for x in lrs], "chosen lr",
            f"{h} (chosen)", f"{h} (paper)"]
    md = "\n".join([
        f"# {args.study}: the lr chosen by the last epoch's training loss", "",
        f"Passes: {', '.join(f'lr {lr} = `{f}`' for lr, f in (i.partition('=')[::2] for i in args.passes))}"
        + "".join(f"; lr {lr} from `{f}` (earlier output: its runs are gone, so a row chosen there is "
                  "compared unpaired)"
                  for lr, f in (i.partition('=')[::2] for i in args.prior)) + ". "
        f"For each row the lr with the lowest training loss in the last epoch is chosen (no test number enters "
        f"the choice); {h} is the last epoch's test value.", "",
        markdown_table(head, table), "",
        f"The paper's orderings on the chosen rows ({h}; paired z on the same test examples; the best baseline "
        f"is {best}, picked by its own test value, which flatters it):", "", *orderings]) + "\n"
    write_json(args.out / f"{args.name}.json", {"study": args.study, "metric": h, "rows": record,
                                                 "best_baseline": best, "orderings": orderings}, prov)
    write_markdown(args.out / f"{args.name}.md", md, prov)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
