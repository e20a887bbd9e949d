"""compare.md and compare.csv from the models' results: our rows, each followed by the paper's row for the
same method, the shared settings, and the authors' max-over-epochs numbers apart from ours."""

from __future__ import annotations

import csv
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2diff.compare.paper import PaperRow
from t2diff.compare.resolve import CompareOptions, split_overrides
from t2diff.config import ExperimentConfig
from t2diff.provenance import git_commit

METRIC_ORDER = ("recall", "mrr", "ndcg")
MAX_NOTE = ("max over epochs of the test metric: the authors' reporting, selected on the test set, optimistic; "
            "shown for comparison with the paper, never our headline number")
CSV_HEAD = ["model", "source", "config", "dataset", "protocol", "reported", "epochs"]
CSV_TAIL = ["params", "params_mb_fp32", "train_seconds", "wall_seconds", "infer_ms_per_sample"]


@dataclass
class ModelResult:
    """One compared run as the report shows it (made by ``runner.run_model``)."""

    name: str
    model: str
    config: str
    test: dict[str, float]
    reported: str  # which number the metrics are
    epochs_run: int
    params: int
    train_seconds: float  # sum of the epochs' training time (no evaluation)
    wall_seconds: float | None  # Trainer.fit wall time incl. per-epoch evaluation; None: unknown (resumed)
    infer_ms: float  # user tower, per sample, batched, median of repeats
    max_over_epochs: dict[str, float] | None = None
    skipped: bool = False  # taken from an earlier run (--resume)
    paper_method: str | None = None  # the paper's Table 2 row for this model / ablation


def metric_columns(ks: list[int], extra: list[str] | None = None) -> list[str]:
    names = {f"{m}@{k}" for m in METRIC_ORDER for k in ks} | set(extra or [])
    return sorted(names, key=lambda c: (METRIC_ORDER.index(c.split("@")[0]), int(c.split("@")[1])))


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


def _fmt(v: Any, digits: int = 5) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


@dataclass
class Report:
    dataset: str
    cfg: ExperimentConfig  # the shared settings (first model's, after forcing)
    results: list[ModelResult]
    paper: dict[str, PaperRow] | None
    notes: list[str]
    opts: CompareOptions
    started: float
    num_test: int
    paper_dataset: str = ""  # whose Table 2 columns the paper rows are
    finished: bool = False
    missing: list[str] = field(default_factory=list)  # --no-train: runs without a finished run
    commit: str = field(default_factory=git_commit)  # the code that trained this invocation's runs

    def columns(self) -> list[str]:
        extra = [c for p in (self.paper or {}).values() for c in p.metrics]
        return metric_columns(self.cfg.eval.ks, extra)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per table row: ours, each followed by the paper's row for the same method."""
        cols, out = self.columns(), []
        for r in self.results:
            row = {"model": r.name, "source": "ours", "config": r.config, "dataset": self.dataset,
                   "protocol": self.cfg.data.protocol, "reported": r.reported, "epochs": r.epochs_run,
                   **{c: _round(r.test.get(c)) for c in cols}, "params": r.params,
                   "params_mb_fp32": round(r.params * 4 / 1e6, 3), "train_seconds": r.train_seconds,
                   "wall_seconds": r.wall_seconds, "infer_ms_per_sample": round(r.infer_ms, 4)}
            if self.opts.max_over_epochs:
                row.update({f"max_over_epochs:{c}": _round((r.max_over_epochs or {}).get(c)) for c in cols})
            out.append(row)
            p = (self.paper or {}).get(r.paper_method or "")
            if p is not None:
                out.append({"model": p.method, "source": "paper Table 2", "config": "", "dataset": self.paper_dataset,
                            "protocol": "paper", "reported": "max over epochs of test (authors' reporting)",
                            "epochs": None, **{c: p.metrics.get(c) for c in cols}, "params": None,
                            "params_mb_fp32": p.params_mb, "train_seconds": None, "wall_seconds": None,
                            "infer_ms_per_sample": p.infer_ms})
        return out

    def write_csv(self, path: Path) -> None:
        rows = self.rows()
        head = CSV_HEAD + self.columns() + CSV_TAIL
        if self.opts.max_over_epochs:
            head += [f"max_over_epochs:{c}" for c in self.columns()]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=head, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})

    def markdown(self) -> str:
        cols = self.columns()
        lines = [f"# Comparison on {self.dataset}, protocol `{self.cfg.data.protocol}`", ""]
        lines += ["```bash", self.opts.command or self.opts.command_line(), "```", ""]
        lines += self._settings()
        lines += ["", "| " + " | ".join(["model", "source", "reported", *cols, "params", "MB fp32", "train s",
                                          "wall s", "epochs", "infer ms/sample"]) + " |",
                  "|" + "---|" * (len(cols) + 9)]
        for r in self.rows():
            vals = [r["model"], r["source"], r["reported"], *[_fmt(r.get(c)) for c in cols], _fmt(r["params"]),
                    _fmt(r["params_mb_fp32"], 3), _fmt(r["train_seconds"], 1), _fmt(r["wall_seconds"], 1),
                    _fmt(r["epochs"]), _fmt(r["infer_ms_per_sample"], 4)]
            lines.append("| " + " | ".join(vals) + " |")
        if self.opts.max_over_epochs:
            lines += self._max_over_epochs(cols)
        lines += self._legend()
        return "\n".join(lines) + "\n"

    def _settings(self) -> list[str]:
        """The bullet list under the command: status, shared settings, machine, overrides, forced, missing."""
        cfg, d = self.cfg, self.cfg.data
        elapsed = time.perf_counter() - self.started
        reused = sum(r.skipped for r in self.results)
        status = ("finished; wall time of this invocation" if self.finished
                  else f"in progress ({len(self.results)} model(s) done); wall time so far")
        if reused:
            status += f" ({reused} model(s) reused from earlier runs with --resume, not retrained)"
        lines = [
            f"- {status}: {elapsed / 60:.1f} min; written "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- shared settings: data.path `{d.path}`, protocol `{d.protocol}`"
            + (f" (split_seed {d.paper.split_seed}, test_frac {d.paper.test_frac}, "
               f"train_targets {d.paper.train_targets})"
               if d.protocol == "paper" else "")
            + f", max_len {d.max_len}, train.seed {cfg.train.seed}, eval.ks {cfg.eval.ks}, "
            f"mask_seen {cfg.eval.mask_seen}; {self.num_test} test examples, full ranking over all items",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), device {self.opts.device}; commit `{self.commit}`",
        ]
        shared, per = split_overrides(self.opts.overrides)
        if shared:
            lines.append(f"- overrides applied to every model: `{' '.join(shared)}`")
        lines += [f"- overrides for {label} only: `{' '.join(ovs)}`" for label, ovs in per.items()]
        lines += [f"- forced: {n}" for n in self.notes]
        lines += [f"- not in the table (no finished run in {self.opts.out / 'runs' / m}; --no-train)"
                  for m in self.missing]
        return lines

    def _max_over_epochs(self, cols: list[str]) -> list[str]:
        """The authors' reporting, in a table of its own so it is never read as ours."""
        mx = [r for r in self.results if r.max_over_epochs]
        lines = ["", f"Authors' reporting ({MAX_NOTE}):", "",
                 "| model | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
        lines += [f"| {r.name} | " + " | ".join(_fmt((r.max_over_epochs or {}).get(c)) for c in cols) + " |"
                  for r in mx]
        if not mx:
            lines.append("(none: only the paper protocol evaluates the test set every epoch)")
        return lines

    def _legend(self) -> list[str]:
        lines = ["", "Columns: metrics are on the protocol's test examples (`reported` says which epoch: loo "
                 "selects on validation; paper has no validation set, so the last epoch's test is reported). "
                 "`params` = count_parameters (all trainable tensors incl. embedding tables), MB fp32 = params x 4 "
                 "bytes / 1e6. `train s` = training time summed over epochs; `wall s` = the whole Trainer.fit "
                 "including per-epoch evaluation (a run reused with --resume keeps the time recorded when it was "
                 "trained). `infer ms/sample` = the user tower on one batch of "
                 f"{self.opts.infer_batch} test examples, median of {self.opts.infer_repeats} runs, divided by "
                 "the batch size, in this process (item vectors excluded: an ANN index holds them)."]
        if self.paper:
            lines += ["", "`paper Table 2` rows: the published numbers (Wang et al., WWW'25, Table 2), reported by "
                      "the authors as the maximum over epochs of the test metric; their Params (MB) and Infer Time "
                      "(per sample on 5 Tesla T4 GPUs) are put in the MB and infer columns as printed."
                      + (" KuaiRand values are divided by 10 (the paper prints them x10)."
                         if self.paper_dataset == "kuairand" else "")]
        return lines

    def write(self) -> None:
        self.opts.out.mkdir(parents=True, exist_ok=True)
        self.write_csv(self.opts.out / "compare.csv")
        (self.opts.out / "compare.md").write_text(self.markdown())
