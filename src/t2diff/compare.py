"""Compare models on ONE prepared dataset under ONE protocol with the same seeds (``t2diff compare``).

Every model is trained and evaluated by the same Trainer and evaluator; the settings that define the test set
and the randomness (data.path, the protocol and its split, seeds, history length, cut-offs) are forced equal
across models, so each row of the table comes from the same examples. Writes compare.md and compare.csv.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from t2diff.config import ConfigError, ExperimentConfig, load_config, parse_override
from t2diff.data.batching import make_batch
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Examples
from t2diff.models.base import SeqRecModel, count_parameters

# Settings that must be identical for the rows to be comparable: the first model's value (after overrides)
# is imposed on the others. data.path is not in the list: a disagreement there is an error, never forced.
FORCED: tuple[tuple[str, str], ...] = (
    ("data", "protocol"), ("data", "split_seed"), ("data", "test_frac"), ("data", "train_targets"),
    ("data", "max_len"), ("train", "seed"), ("eval", "ks"), ("eval", "mask_seen"),
)

# our registry name -> the method's row in the paper's Table 2
PAPER_NAMES: dict[str, str] = {"sasrec": "SASRec", "caser": "Caser", "gru4rec": "GRU4Rec", "bert4rec": "Bert4Rec",
                               "dat": "DAT+", "t2diff": "T2Diff"}


def paper_method(model: dict[str, Any]) -> str | None:
    """The paper's Table 2 row for a model section: T2Diff's ablations by their switches; None for a variant
    the paper does not have (e.g. kl_positions=last)."""
    name = model.get("name", "")
    if name != "t2diff":
        return PAPER_NAMES.get(name)
    if not model.get("diffusion", True):
        return "Mixed-attention"
    if model.get("kl_positions", "all") != "all":
        return None
    return "T2Diff" if model.get("drift", True) else "W/O DP"


# dataset -> (Table 2 metric columns, scale): the paper prints KuaiRand values multiplied by 10
PAPER_METRICS: dict[str, tuple[tuple[str, ...], float]] = {
    "ml-1m": (("recall@2", "recall@20", "mrr@2", "mrr@20"), 1.0),
    "kuairand": (("recall@10", "recall@100", "mrr@10", "mrr@100"), 0.1),
}
METRIC_ORDER = ("recall", "mrr", "ndcg")
MAX_NOTE = ("max over epochs of the test metric: the authors' reporting, selected on the test set, optimistic; "
            "shown for comparison with the paper, never our headline number")


@dataclass
class CompareOptions:
    out: Path
    models: list[str] = field(default_factory=list)  # registry names, configs looked up in config_dir
    configs: list[Path] = field(default_factory=list)  # or explicit config files
    config_dir: Path = Path("configs/ml-1m")
    protocol: str | None = None  # None: the first config's protocol
    overrides: list[str] = field(default_factory=list)  # applied to every model; "MODEL:KEY=VALUE" to one
    paper: bool = False  # add the paper's Table 2 rows
    paper_dataset: str | None = None  # which Table 2 columns; None: the prepared dataset's name
    max_over_epochs: bool = False  # paper protocol: add the authors' max-over-epochs numbers
    resume: bool = False  # skip models whose run holds metrics.json, continue interrupted ones
    only: list[str] = field(default_factory=list)  # train just these run labels (parallel jobs); no table written
    no_train: bool = False  # tabulate finished runs only; never train (models without metrics.json are left out)
    progress: bool = True
    device: str = "cpu"
    infer_batch: int = 256
    infer_repeats: int = 5
    command: str = ""  # recorded in the report; empty: rebuilt by command_line()

    def command_line(self) -> str:
        """The equivalent ``t2diff compare`` command line."""
        parts = ["t2diff", "compare"]
        if self.models:
            parts += ["--models", *self.models, "--config-dir", str(self.config_dir)]
        else:
            parts += ["--configs", *map(str, self.configs)]
        if self.protocol:
            parts += ["--protocol", self.protocol]
        parts += ["--out", str(self.out)]
        flags = {"--paper": self.paper, "--max-over-epochs": self.max_over_epochs, "--resume": self.resume,
                 "--no-train": self.no_train, "--no-progress": not self.progress}
        parts += [f for f, on in flags.items() if on]
        if self.paper_dataset:
            parts += ["--paper-dataset", self.paper_dataset]
        if self.only:
            parts += ["--only", *self.only]
        if self.device != "cpu":
            parts += ["--device", self.device]
        return shlex.join([*parts, *self.overrides])


@dataclass
class Entry:
    name: str  # run label, unique: DIR/runs/<name>
    config_path: Path
    cfg: ExperimentConfig


@dataclass
class ModelResult:
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


@dataclass
class PaperRow:
    method: str
    metrics: dict[str, float]
    params_mb: float | None
    infer_ms: float | None


# ---- configs -------------------------------------------------------------------------------------------------
def _overridden(overrides: list[str], key: str) -> bool:
    return any(".".join(parse_override(o)[0]) == key for o in overrides)


def config_path_for(model: str, config_dir: Path, protocol: str | None) -> Path:
    """``<model>-<protocol>.yaml`` (e.g. sasrec-paper.yaml, t2diff-loo.yaml) when it exists, else ``<model>.yaml``
    (its protocol is then overridden by the forced one)."""
    if protocol and (config_dir / f"{model}-{protocol}.yaml").exists():
        return config_dir / f"{model}-{protocol}.yaml"
    p = config_dir / f"{model}.yaml"
    if not p.exists():
        raise ConfigError(f"no config for model {model!r}: {p} not found (pass --configs or --config-dir)")
    return p


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Shared overrides, and per-model ones written ``MODEL:KEY=VALUE`` (e.g. ``sasrec:train.epochs=6``, so
    each model gets its own epoch budget); MODEL is a model name or a config file's stem."""
    shared: list[str] = []
    per: dict[str, list[str]] = {}
    for o in overrides:
        key = o.split("=", 1)[0]
        if ":" in key:  # only the key is looked at: values may hold ':'
            label, rest = o.split(":", 1)
            per.setdefault(label, []).append(rest)
        else:
            shared.append(o)
    return shared, per


def resolve_entries(opts: CompareOptions) -> tuple[list[Entry], list[str]]:
    """Load every model's config with the shared (then its own) overrides, check data.path and force the shared
    settings. Returns the entries and notes on each forced change."""
    if opts.models and opts.configs:
        raise ConfigError("give --models (configs looked up in --config-dir) or --configs, not both")
    if not opts.models and not opts.configs:
        raise ConfigError("nothing to compare: give --models or --configs")
    shared, per = split_overrides(opts.overrides)
    extra = [f"data.protocol={opts.protocol}"] if opts.protocol else []
    used: set[str] = set()

    def own(*labels: str) -> list[str]:
        hits = [lab for lab in dict.fromkeys(labels) if lab in per]
        used.update(hits)
        return [o for lab in hits for o in per[lab]]

    entries: list[Entry] = []
    if opts.configs:
        for p in opts.configs:
            name = load_config(p, [*extra, *shared]).model["name"]
            cfg = load_config(p, [*extra, *shared, *own(name, Path(p).stem)])
            entries.append(Entry(name, Path(p), cfg))
    else:
        for m in opts.models:
            p = config_path_for(m, opts.config_dir, opts.protocol)
            cfg = load_config(p, [*extra, *shared, *own(m)])
            if cfg.model["name"] != m:
                raise ConfigError(f"{p} configures model {cfg.model['name']!r}, not {m!r}")
            entries.append(Entry(m, p, cfg))
    if set(per) - used:
        raise ConfigError(f"per-model override(s) for {sorted(set(per) - used)} match no compared model")
    seen: dict[str, int] = {}
    for e in entries:  # two configs of one model: label the runs by config file name
        seen[e.name] = seen.get(e.name, 0) + 1
    for e in entries:
        if seen[e.name] > 1:
            e.name = e.config_path.stem
    if len({e.name for e in entries}) < len(entries):
        raise ConfigError(f"run labels collide: {[e.name for e in entries]}; give configs distinct file names")

    if not _overridden(shared, "data.path"):
        paths = {str(Path(e.cfg.data.path).resolve()) for e in entries}
        if len(paths) > 1:
            listing = ", ".join(f"{e.config_path}: {e.cfg.data.path}" for e in entries)
            raise ConfigError(f"the configs disagree on data.path ({listing}); a comparison uses one prepared "
                              "dataset: fix the configs or pass data.path=... to override all of them")
    notes: list[str] = []
    ref = entries[0]
    for sec, key in FORCED:
        want = getattr(getattr(ref.cfg, sec), key)
        for e in entries[1:]:
            have = getattr(getattr(e.cfg, sec), key)
            if have != want:
                setattr(getattr(e.cfg, sec), key, want)
                notes.append(f"{e.name}: {sec}.{key} {have!r} -> {want!r} (forced equal to {ref.name}'s)")
    return entries, notes


# ---- measurements --------------------------------------------------------------------------------------------
@torch.no_grad()
def time_user_tower(model: SeqRecModel, ds: PreparedDataset, ex: Examples, max_len: int, batch_size: int = 256,
                    repeats: int = 5, device: str = "cpu") -> float:
    """Per-sample milliseconds of ``user_embeddings`` on one batch of test examples: median of ``repeats``
    timed calls after one warm-up call. Item vectors are excluded (an ANN index holds them precomputed)."""
    n = min(batch_size, len(ex))
    if n == 0:
        return float("nan")
    batch = make_batch(ds, ex.users[:n], ex.positions[:n], max_len).to(device)
    was_training = model.training
    model.eval()
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    model.user_embeddings(batch)  # warm-up: allocator, lazy initialisation
    times = []
    for _ in range(max(repeats, 1)):
        sync()
        t0 = time.perf_counter()
        model.user_embeddings(batch)
        sync()
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    return 1000.0 * statistics.median(times) / n


def _without_budget(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config dict without train.epochs / train.patience: the settings a resumed run may change."""
    train = {k: v for k, v in cfg.get("train", {}).items() if k not in ("epochs", "patience")}
    return {**cfg, "train": train}


def _history(run_dir: Path) -> list[dict[str, Any]]:
    f = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def _reported(cfg: ExperimentConfig, out: dict[str, Any]) -> str:
    if "selected_epoch" in out:
        return f"test @ epoch {out['selected_epoch']} (selected on {out.get('selected_on', 'valid')})"
    return f"test @ last epoch ({out.get('epochs_run', '?')})"


def run_model(e: Entry, opts: CompareOptions, log: Callable[[str], None] = print) -> ModelResult | None:
    """Train (or, with --resume and a finished run, reload) one model; measure its size and inference time.
    None with ``no_train`` when the model has no finished run."""
    from t2diff.run import build_from_checkpoint, build_split
    from t2diff.train import Trainer

    cfg = e.cfg
    run_dir = opts.out / "runs" / e.name
    done = run_dir / "metrics.json"
    prev = run_dir / "compare_run.json"
    earlier = json.loads(prev.read_text()).get("wall_seconds") if prev.exists() else None
    skipped = False
    if opts.no_train and not done.exists():
        log(f"[{e.name}] no finished run in {run_dir} (--no-train): left out of the table")
        return None
    if (opts.resume or opts.no_train) and done.exists():
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else None
        if saved is None or _without_budget(saved) != _without_budget(cfg.to_dict()):
            raise ConfigError(f"{run_dir} was trained with another config; remove it or use another --out")
        # same run with a larger train.epochs / patience: the Trainer extends it; otherwise reuse it as it is
        skipped = saved == cfg.to_dict() or opts.no_train  # --no-train: as it is, never extended
    if skipped:
        log(f"[{e.name}] {done} exists: reusing the finished run")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        out = json.loads(done.read_text())
        model, _, ds = build_from_checkpoint(run_dir)  # best.pt (loo: selected epoch) else last.pt (paper)
        model.to(opts.device)
        split = build_split(cfg, ds)
        wall = earlier
    else:
        log(f"[{e.name}] training with {e.config_path} -> {run_dir}")
        t0 = time.perf_counter()
        trainer = Trainer(cfg, run_dir, progress=opts.progress, device=opts.device,
                          log=lambda s: log(f"[{e.name}] {s}"))
        out = trainer.fit(resume=opts.resume)
        wall = time.perf_counter() - t0 + (earlier if opts.resume and earlier else 0.0)  # an extended run: both parts
        (run_dir / "compare_run.json").write_text(json.dumps({"wall_seconds": round(wall, 2)}) + "\n")
        model, ds, split = trainer.model, trainer.ds, trainer.split
    torch.manual_seed(cfg.train.seed)  # models that sample at inference (T2Diff's reverse chain)
    infer = time_user_tower(model, ds, split.test, cfg.data.max_len, opts.infer_batch, opts.infer_repeats,
                            opts.device)
    hist = _history(run_dir)
    mx = None
    if opts.max_over_epochs and hist and all("test" in h for h in hist):
        mx = {k: max(h["test"][k] for h in hist) for k in hist[-1]["test"] if "@" in k}
    return ModelResult(
        name=e.name, model=cfg.model["name"], config=str(e.config_path), test=out["test"], reported=_reported(cfg, out),
        epochs_run=int(out.get("epochs_run", len(hist))), params=count_parameters(model),
        train_seconds=round(sum(h.get("train_seconds", 0.0) for h in hist), 2),
        wall_seconds=None if wall is None else round(wall, 2), infer_ms=infer, max_over_epochs=mx, skipped=skipped,
        paper_method=paper_method(cfg.model))


# ---- the paper's numbers -------------------------------------------------------------------------------------
def paper_table2(dataset: str) -> dict[str, PaperRow]:
    """Table 2 rows for ``dataset`` (ml-1m | kuairand), KuaiRand values divided by 10 back to raw metrics."""
    if dataset not in PAPER_METRICS:
        raise ConfigError(f"the paper reports ml-1m and kuairand, not {dataset!r} (use --paper-dataset)")
    cols, scale = PAPER_METRICS[dataset]
    text = resources.files("t2diff").joinpath("paper_tables.csv").read_text()
    rows: dict[str, PaperRow] = {}
    for r in csv.DictReader(io.StringIO(text)):
        if r["table"] != "2":
            continue
        rows[r["method"]] = PaperRow(
            method=r["method"], metrics={c: round(float(r[c]) * scale, 6) for c in cols},
            params_mb=float(r["params_mb"]) if r["params_mb"] else None,
            infer_ms=float(r["infer_ms"]) if r["infer_ms"] else None)
    return rows


# ---- the report ----------------------------------------------------------------------------------------------
def metric_columns(ks: list[int], extra: list[str] | None = None) -> list[str]:
    names = {f"{m}@{k}" for m in METRIC_ORDER for k in ks} | set(extra or [])
    return sorted(names, key=lambda c: (METRIC_ORDER.index(c.split("@")[0]), int(c.split("@")[1])))


CSV_HEAD = ["model", "source", "config", "dataset", "protocol", "reported", "epochs"]
CSV_TAIL = ["params", "params_mb_fp32", "train_seconds", "wall_seconds", "infer_ms_per_sample"]


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
        cfg, cols = self.cfg, self.columns()
        d = cfg.data
        elapsed = time.perf_counter() - self.started
        lines = [f"# Comparison on {self.dataset}, protocol `{d.protocol}`", ""]
        lines += ["```bash", self.opts.command or self.opts.command_line(), "```", ""]
        reused = sum(r.skipped for r in self.results)
        status = ("finished; wall time of this invocation" if self.finished
                  else f"in progress ({len(self.results)} model(s) done); wall time so far")
        if reused:
            status += f" ({reused} model(s) reused from earlier runs with --resume, not retrained)"
        lines += [
            f"- {status}: {elapsed / 60:.1f} min; written "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- shared settings: data.path `{d.path}`, protocol `{d.protocol}`"
            + (f" (split_seed {d.split_seed}, test_frac {d.test_frac}, train_targets {d.train_targets})"
               if d.protocol == "paper" else "")
            + f", max_len {d.max_len}, train.seed {cfg.train.seed}, eval.ks {cfg.eval.ks}, "
            f"mask_seen {cfg.eval.mask_seen}; {self.num_test} test examples, full ranking over all items",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), device {self.opts.device}",
        ]
        shared, per = split_overrides(self.opts.overrides)
        if shared:
            lines.append(f"- overrides applied to every model: `{' '.join(shared)}`")
        lines += [f"- overrides for {label} only: `{' '.join(ovs)}`" for label, ovs in per.items()]
        lines += [f"- forced: {n}" for n in self.notes]
        lines += [f"- not in the table (no finished run in {self.opts.out / 'runs' / m}; --no-train)"
                  for m in self.missing]
        lines += ["", "| " + " | ".join(["model", "source", "reported", *cols, "params", "MB fp32", "train s",
                                          "wall s", "epochs", "infer ms/sample"]) + " |",
                  "|" + "---|" * (len(cols) + 9)]
        for r in self.rows():
            vals = [r["model"], r["source"], r["reported"], *[_fmt(r.get(c)) for c in cols], _fmt(r["params"]),
                    _fmt(r["params_mb_fp32"], 3), _fmt(r["train_seconds"], 1), _fmt(r["wall_seconds"], 1),
                    _fmt(r["epochs"]), _fmt(r["infer_ms_per_sample"], 4)]
            lines.append("| " + " | ".join(vals) + " |")
        if self.opts.max_over_epochs:
            mx = [r for r in self.results if r.max_over_epochs]
            lines += ["", f"Authors' reporting ({MAX_NOTE}):", "",
                      "| model | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
            lines += [f"| {r.name} | " + " | ".join(_fmt((r.max_over_epochs or {}).get(c)) for c in cols) + " |"
                      for r in mx]
            if not mx:
                lines.append("(none: only the paper protocol evaluates the test set every epoch)")
        lines += ["", "Columns: metrics are on the protocol's test examples (`reported` says which epoch: loo "
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
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.opts.out.mkdir(parents=True, exist_ok=True)
        self.write_csv(self.opts.out / "compare.csv")
        (self.opts.out / "compare.md").write_text(self.markdown())


def compare(opts: CompareOptions, log: Callable[[str], None] = print) -> Report:
    """Run the comparison; compare.md / compare.csv are rewritten after every model (a partial table survives
    an interruption; --resume continues)."""
    from t2diff.run import build_split

    started = time.perf_counter()
    entries, notes = resolve_entries(opts)
    for n in notes:
        log(f"forced: {n}")
    cfg0 = entries[0].cfg
    ds = PreparedDataset.load(cfg0.data.path)
    dataset = str(ds.meta.get("dataset", "unknown"))
    paper = paper_table2(opts.paper_dataset or dataset) if opts.paper else None
    if opts.max_over_epochs and cfg0.data.protocol != "paper":
        notes.append("--max-over-epochs ignored: only the paper protocol evaluates the test set every epoch")
    num_test = len(build_split(cfg0, ds).test)
    report = Report(dataset, cfg0, [], paper, notes, opts, started, num_test, opts.paper_dataset or dataset)
    opts.out.mkdir(parents=True, exist_ok=True)
    if opts.only:
        unknown = sorted(set(opts.only) - {e.name for e in entries})
        if unknown:
            raise ConfigError(f"--only {unknown}: not among the compared runs {[e.name for e in entries]}")
        for e in entries:  # settings were forced over the whole list above, so a later --resume reuses these runs
            if e.name in opts.only:
                run_model(e, opts, log)
        return report
    for e in entries:
        result = run_model(e, opts, log)
        if result is None:
            report.missing.append(e.name)
            continue
        report.results.append(result)
        report.write()
    report.finished = True
    report.write()
    return report
