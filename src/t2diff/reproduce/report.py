"""REPORT.md (and reproduce.json, PNG plots) of a reproduction: our numbers beside the paper's, per table, the
paper's orderings checked on ours, every protocol and data difference, and the runs that did not finish."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from t2diff.compare.paper import PAPER_METRICS, paper_table2
from t2diff.paired import paired, per_example
from t2diff.provenance import write_json, write_markdown
from t2diff.reproduce.plan import TABLE2
from t2diff.reproduce.runner import ReproduceOptions, RunOutcome, StudyOutcome

BASELINES = tuple(m for m, model, ovs in TABLE2 if model != "t2diff")
PAPER_TABLE34 = {  # Tables 3 and 4 (ML-1M only): method -> (recall@20, mrr@20, infer ms)
    "beta=linear": (0.27519, 0.08677, None), "beta=log": (0.25151, 0.08137, None),
    "beta=exp": (0.27727, 0.08730, None),
    "T=10": (0.2724, 0.0852, 0.22), "T=50": (0.2773, 0.0873, 0.68), "T=200": (0.2715, 0.0885, 2.30),
}


def headline(dataset: str, protocol: str) -> str:
    """The recall the orderings are judged on: the paper's larger cut-off under its protocol, recall@20 under
    ours (a recall, because its standard error is binomial)."""
    return PAPER_METRICS[dataset][0][1] if protocol == "paper" else "recall@20"


def metric_cols(dataset: str, protocol: str) -> list[str]:
    return list(PAPER_METRICS[dataset][0]) if protocol == "paper" else ["recall@10", "ndcg@10", "recall@20"]


def _value(row: RunOutcome, col: str) -> float | None:
    return None if row.result is None else row.result.test.get(col)


def _f(v: float | None, d: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def _verdict(a: float, b: float, z: float, rule: str, how: str) -> str:
    ok = {">": z >= 2, ">=": z > -2, "~": abs(z) < 2}[rule]
    return f"{'holds' if ok else 'does not hold'} ({a:.4f} vs {b:.4f}, z {z:+.1f}, {how})"


def compare_pair(a: float | None, b: float | None, n: int | None, rule: str) -> str:
    """``a rule b`` (rule: '>' clear, '>=' not clearly worse, '~' within noise) judged with unpaired binomial
    standard errors on ``n`` test examples: z = (a - b) / sqrt(se_a^2 + se_b^2), 'clearly' = |z| >= 2."""
    if a is None or b is None or not n:
        return "not measured"
    z = (a - b) / math.sqrt(_se(a, n) ** 2 + _se(b, n) ** 2 or 1e-12)
    return _verdict(a, b, z, rule, "unpaired")


def _hits(row: RunOutcome | None, metric: str) -> np.ndarray | None:
    """The row's per-example metric from its test ranks, only when they reproduce its reported value (else a
    stale or non-deterministic ranking would be paired). [n]"""
    if row is None or row.ranks is None or row.result is None or metric not in row.result.test:
        return None
    x = per_example(row.ranks.ranks(row.mask_seen), (metric,))[metric]
    return x if abs(float(x.mean()) - row.result.test[metric]) <= 1e-6 else None


def compare_rows(a: RunOutcome | None, b: RunOutcome | None, metric: str, n: int | None, rule: str) -> str:
    """``compare_pair`` on two runs, paired when both have test ranks on the same examples that reproduce their
    reported values: z = mean(d) / (std(d) / sqrt(n)), d the per-example difference. Models ranked on the same
    users are positively correlated, so pairing removes the shared per-user difficulty from the SE; where a run's
    ranks are missing the unpaired binomial SE is used and the line says so."""
    va = None if a is None else _value(a, metric)
    vb = None if b is None else _value(b, metric)
    ha, hb = _hits(a, metric), _hits(b, metric)
    same = (ha is not None and hb is not None and a is not None and b is not None and a.ranks is not None
            and b.ranks is not None and np.array_equal(a.ranks.users, b.ranks.users)
            and np.array_equal(a.ranks.positions, b.ranks.positions))
    if not same or va is None or vb is None:
        return compare_pair(va, vb, n, rule)
    pr = paired(ha, hb)
    z = pr["z"] if math.isfinite(pr["z"]) else (0.0 if pr["diff"] == 0 else math.copysign(math.inf, pr["diff"]))
    return _verdict(va, vb, z, rule, "paired")


def _orderings(so: StudyOutcome, dataset: str) -> list[str]:
    h, n = headline(dataset, so.study.protocol), so.num_test
    by = {r.spec.method: r for r in so.rows}

    def v(m: str) -> float | None:
        return _value(by[m], h) if m in by else None

    def c(x: str, y: str | None, rule: str) -> str:
        return compare_rows(by.get(x), by.get(y) if y else None, h, n, rule)

    lines = []
    if so.study.kind == "table2":
        base = [(m, v(m)) for m in BASELINES if v(m) is not None]
        best = max(base, key=lambda x: x[1])[0] if base else None
        lines.append(f"- T2Diff > Mixed-attention: {c('T2Diff', 'Mixed-attention', '>')}")
        lines.append(f"- Mixed-attention > best baseline ({best}): {c('Mixed-attention', best, '>')}")
        lines.append(f"- T2Diff > best baseline ({best}): {c('T2Diff', best, '>')}")
        if "T2DiffCausal (ours)" in by:
            lines.append(f"- T2DiffCausal (ours) > best baseline ({best}): {c('T2DiffCausal (ours)', best, '>')}")
    elif so.study.kind == "table3":
        lines.append(f"- exp >= linear: {c('beta=exp', 'beta=linear', '>=')}")
        lines.append(f"- linear > log: {c('beta=linear', 'beta=log', '>')}")
    else:
        lines.append(f"- T = 50 ~ 200: {c('T=50', 'T=200', '~')}")
        lines.append(f"- T = 50 > 10: {c('T=50', 'T=10', '>')}")
    return [f"On {h} (test, {n} examples; z from paired per-example differences on the same test examples, or from "
            "unpaired binomial standard errors where a run's ranks are unavailable, as each line says; 'holds' "
            "needs |z| >= 2 where the paper claims a difference; the best baseline is picked by its own test "
            "value, which flatters it):", "", *lines]


def _popularity_line(so: StudyOutcome, dataset: str) -> str:
    """The floor under the table: items ranked by training count, the same list for every user."""
    if so.popularity is None:
        return "Popularity floor: not computed (the data could not be read; see the log)."
    cols = metric_cols(dataset, so.study.protocol)
    cells = [f"{c} {_f(so.popularity['unmasked'].get(c))} / {_f(so.popularity['masked'].get(c))}" for c in cols
             if c in so.popularity["unmasked"]]
    return ("Popularity floor on the same test examples (every item ranked by its count in the training part of "
            "the split, one list for every user; seen items not masked / masked): " + "; ".join(cells) + ".")


def _paper_values(dataset: str, so: StudyOutcome) -> dict[str, dict[str, float | None]]:
    """The paper's numbers per row of this study (only under the paper protocol: it reports nothing else)."""
    if so.study.protocol != "paper":
        return {}
    if so.study.kind == "table2":
        t2 = paper_table2(dataset)
        return {m: {**p.metrics, "params_mb": p.params_mb, "infer_ms": p.infer_ms} for m, p in t2.items()}
    if dataset != "ml-1m":
        return {}
    return {m: {"recall@20": r, "mrr@20": mr, "infer_ms": ms} for m, (r, mr, ms) in PAPER_TABLE34.items()}


def _study_table(so: StudyOutcome, dataset: str) -> list[str]:
    cols = metric_cols(dataset, so.study.protocol)
    paper = _paper_values(dataset, so)
    pcols = [c for c in cols if any(c in p for p in paper.values())]
    head = ["method", *[f"{c} (ours)" for c in cols], *[f"{c} (paper)" for c in pcols], "status",
            "params MB (ours / paper)", "infer ms/sample (ours / paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in so.rows:
        p = paper.get(r.spec.method, {})
        mb = None if r.result is None else r.result.params * 4 / 1e6
        ms = None if r.result is None else r.result.infer_ms
        vals = [r.spec.method, *[_f(_value(r, c)) for c in cols], *[_f(p.get(c)) for c in pcols], r.status,
                f"{_f(mb, 3)} / {_f(p.get('params_mb'), 3)}", f"{_f(ms, 3)} / {_f(p.get('infer_ms'), 2)}"]
        lines.append("| " + " | ".join(vals) + " |")
    return lines


def _authors_table(so: StudyOutcome, dataset: str) -> list[str]:
    """Paper protocol: how much the authors' reporting inflates each row (same runs, same ranks): the max over
    epochs, their test() loop's double count, and both (what their code prints)."""
    import json

    from t2diff.train import AUTHORS_BOTH_LABEL, AUTHORS_LOOP_LABEL, MAX_LABEL

    h = headline(dataset, so.study.protocol)
    paper = _paper_values(dataset, so)
    lines = [f"The authors' reporting on the same runs ({h}; each column is computed from the same test ranks as "
             "ours; optimistic by construction):", "",
             "| method | ours (last epoch) | max over epochs | double-counted first batch | both (the authors' "
             "code) | paper |", "|---|---|---|---|---|---|"]
    for r in so.rows:
        f = r.run_dir / "metrics.json"
        m = json.loads(f.read_text()) if r.result is not None and f.exists() else {}
        vals = [(m.get(k) or {}).get(h) for k in ("test", MAX_LABEL, AUTHORS_LOOP_LABEL, AUTHORS_BOTH_LABEL)]
        lines.append(f"| {r.spec.method} | " + " | ".join(_f(v) for v in vals)
                     + f" | {_f(paper.get(r.spec.method, {}).get(h))} |")
    return lines


def _plot(so: StudyOutcome, dataset: str, out: Path) -> Path | None:
    """Bars of the headline recall, ours beside the paper's; Table 4 adds inference time against T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = headline(dataset, so.study.protocol)
    paper = _paper_values(dataset, so)
    rows = [r for r in so.rows if _value(r, h) is not None]
    if not rows:
        return None
    names = [r.spec.method for r in rows]
    ours = [_value(r, h) for r in rows]
    theirs = [paper.get(m, {}).get(h) for m in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 2), 3.6))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], ours, width=0.4, label="ours")
    if any(t is not None for t in theirs):
        ax.bar([i + 0.2 for i in x], [t or 0.0 for t in theirs], width=0.4, label="paper")
    ax.set_xticks(list(x), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"test {h}")
    ax.set_title(f"{dataset}: {so.study.key}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{so.study.key}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _data_line(opts: ReproduceOptions, plan: list[Any]) -> str:
    """The prepared data set the runs read, as its meta.json describes it."""
    import json

    import yaml

    for st in plan:
        for r in st.trained:
            f = opts.out / st.key / "configs" / f"{r.label}.yaml"
            if f.exists():
                path = Path((yaml.safe_load(f.read_text()).get("data") or {}).get("path", ""))
                meta = path / "meta.json"
                if meta.exists():
                    m = json.loads(meta.read_text())
                    return (f"`{path}` (prepared `{m.get('dataset')}`): {m.get('num_users'):,} users, "
                            f"{m.get('num_items'):,} items, {m.get('num_interactions'):,} interactions")
                return f"`{path}` (no meta.json)"
    return "no run config written"


def _differences(opts: ReproduceOptions, data_line: str) -> list[str]:
    kuai = opts.dataset == "kuairand"
    return [
        "- **Selection and reporting.** Under the paper protocol the authors report each metric's maximum over "
        "epochs on the test set; our headline is the last epoch's test number (no validation set exists under "
        "that protocol), and the max over epochs sits apart in each study's compare.md. Under loo the epoch is "
        "selected on validation and the test set is read once.",
        "- **The authors' code counts the first 512 test rows twice and reads histories in file order**; we count "
        "every row once (their count is shown beside ours under the paper protocol) and order each history by time "
        "(`data.paper.history_order=file` reproduces theirs; the shared ML-1M sequences are already in time order, "
        "so there it changes nothing).",
        "- **Model size.** Scale `ours`: d = 64 (our configs); scale `paper`: the authors' 4-d items "
        "(configs/<dataset>/paper-scale/). Our side features are added to the id embedding, not concatenated.",
        "- **Protocols.** `paper`: 80/20 users (seed 42), one test position per test user, history 50. `loo`: "
        "chronological leave-one-out over every user, full ranking over all items; not in the paper.",
        "- **Params MB.** Ours: fp32 weights (count x 4 bytes). At the paper's scale its column matches about 8 bytes "
        "per weight (docs/paper-scale.md), so expect ours at about half of it there.",
        "- **Inference time.** Ours: the user tower per sample, batched, on this machine's CPU; the paper's: per "
        "sample on 5 Tesla T4 GPUs. Compare ratios within a column, not across.",
        ("- **Data.** KuaiRand: our shared subset (KuaiRand-Pure clicks), smaller than the paper's 25,828 users / "
         "108,025 items; its numbers are not directly comparable. The paper prints KuaiRand metrics x10; ours and "
         "the paper's are shown unscaled.") if kuai else
        "- **Data.** ML-1M: every rating as an implicit interaction, as the authors use it.",
        f"- **Read by these runs:** {data_line}.",
        "- **T2DiffCausal** is ours (models/t2diff_causal.py), not a row of the paper.",
    ]


def _invocations(previous: Path, prov: dict[str, Any], minutes: float, finished: bool,
                 invocation: str | None) -> list[dict[str, Any]]:
    """Every invocation that wrote into this folder, oldest first, this one last: a ``--resume`` (or a
    re-tabulation) keeps the earlier passes' wall times instead of overwriting them. This invocation is known by
    its id (else by its provenance date and command), so the report written after each study replaces its own
    entry. A reproduce.json from before this log counts as one earlier invocation (its provenance, wall_minutes)."""
    me = {"id": invocation or f"{prov.get('date')} {prov.get('command')}", "date": prov.get("date"),
          "command": prov.get("command"), "commit": prov.get("commit"), "wall_minutes": round(minutes, 2),
          "finished": finished}
    try:
        old = json.loads(previous.read_text()) if previous.exists() else {}
    except (OSError, json.JSONDecodeError):
        old = {}  # an unreadable earlier report: this invocation's own time still stands
    if "invocations" in old:
        past = [dict(x) for x in old["invocations"] if isinstance(x, dict)]
    elif "wall_minutes" in old:
        pv = old.get("provenance") or {}
        past = [{"date": pv.get("date"), "command": pv.get("command"), "commit": pv.get("commit"),
                 "wall_minutes": old["wall_minutes"], "finished": old.get("finished")}]
    else:
        past = []
    past = [x for x in past if x.get("id") != me["id"]]
    return [*past, me]


def _invocation_lines(invocations: list[dict[str, Any]]) -> list[str]:
    if len(invocations) < 2:
        return []
    total = sum(float(x.get("wall_minutes") or 0.0) for x in invocations)
    each = "; ".join(f"{x.get('date')}: {float(x.get('wall_minutes') or 0.0):.1f} min"
                     + ("" if x.get("finished") else " (stopped before the end: time to its last report)")
                     for x in invocations)
    return [f"- {len(invocations)} invocations wrote this folder, {total:.1f} min wall in all: {each} "
            "(commands and commits in reproduce.json)"]


def write_report(opts: ReproduceOptions, plan: list[Any], outcomes: list[StudyOutcome], prov: dict[str, Any],
                 started: float, finished: bool, figures: dict[str, Path] | None = None,
                 invocation: str | None = None) -> Path:
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    minutes = (time.perf_counter() - started) / 60
    budget = ("configs' own budgets" if opts.budget_minutes is None
              else f"{opts.budget_minutes} training minutes shared by the runs this invocation trained")
    if opts.epochs is not None:
        budget += f", epochs capped at {opts.epochs}"
    if opts.eval_users is not None:
        budget += (f", validation and test on a seeded sample of {opts.eval_users} test users per study "
                   "(eval.max_users: estimates with larger standard errors, not the full evaluation)")
    if opts.overrides:
        budget += f"; overrides for every run: `{' '.join(opts.overrides)}`"
    invocations = _invocations(out / "reproduce.json", prov, minutes, finished, invocation)
    lines = [f"# Reproduction of Wang et al., WWW'25 (T2Diff) on {opts.dataset}", "",
             f"- status: {'finished' if finished else 'in progress'}; this invocation's wall time "
             f"{minutes:.1f} min; budget: {budget}",
             *_invocation_lines(invocations),
             f"- studies: {', '.join(s.key for s in plan)}" + (f"; trained only {opts.only}" if opts.only else ""),
             "", "## What differs from the paper", "", *_differences(opts, _data_line(opts, plan))]
    unfinished: list[str] = []
    data: dict[str, Any] = {"dataset": opts.dataset, "finished": finished, "wall_minutes": round(minutes, 2),
                            "budget_minutes": opts.budget_minutes, "epochs_cap": opts.epochs,
                            "eval_users": opts.eval_users, "overrides": list(opts.overrides),
                            "invocations": invocations, "studies": {}}
    for so in outcomes:
        st = so.study
        title = {"table2": "Table 2", "table3": "Table 3 (beta schedule)", "table4": "Table 4 (diffusion steps T)"}
        lines += ["", f"## {title[st.kind]}: protocol `{st.protocol}`, scale `{st.scale}` ({st.key})", "",
                  f"Runs, configs and compare.md / compare.csv: `{st.key}/`.", "", *_study_table(so, opts.dataset)]
        png = _plot(so, opts.dataset, out)
        if png is not None:
            lines += ["", f"![{st.key}]({png.name})"]
        if st.missing:
            lines += ["", "Rows without a config (not run):", "", *[f"- {m}" for m in st.missing]]
        if st.kind == "table2":
            lines += ["", _popularity_line(so, opts.dataset)]
        if st.protocol == "paper" and st.kind == "table2":
            lines += ["", *_authors_table(so, opts.dataset)]
        lines += ["", *_orderings(so, opts.dataset)]
        unfinished += [f"{st.key}/{r.spec.label}: {r.status}" for r in so.rows
                       if r.result is None or r.status.startswith(("unfinished", "interrupted", "not"))]
        data["studies"][st.key] = {
            "kind": st.kind, "protocol": st.protocol, "scale": st.scale, "num_test": so.num_test,
            "missing": st.missing, "popularity": so.popularity,
            "rows": [{"method": r.spec.method, "label": r.spec.label, "run_dir": str(r.run_dir), "status": r.status,
                      "test": None if r.result is None else r.result.test,
                      "params": None if r.result is None else r.result.params,
                      "infer_ms": None if r.result is None else r.result.infer_ms} for r in so.rows]}
    lines += ["", "## Figure 4: cosine(z0_hat, z0) along the reverse chain", ""]
    if figures:
        lines += [f"- scale `{s}`: ![figure4-{s}]({f.name}/diffusion_cosine_trace.png) (`{f.name}/`)"
                  for s, f in figures.items()]
    else:
        lines.append("- not made yet (needs the paper-protocol T2Diff run of Table 2)" if finished else "- pending")
    lines += ["", "## Runs that did not finish", ""]
    lines += [f"- {u}" for u in unfinished] or ["- none"]
    lines += ["", "Regenerate or continue: the command above with `--resume` (finished runs are reused, "
              "interrupted and budget-stopped ones continue; without `--budget-minutes` each run gets its "
              "config's own budget)."]
    write_json(out / "reproduce.json", data, prov)
    return write_markdown(out / "REPORT.md", "\n".join(lines) + "\n", prov)
