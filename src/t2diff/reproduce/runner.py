"""Running a reproduction: every study through ``t2diff compare`` (train, or reuse a finished run, or resume an
interrupted one), Figure 4 through ``t2diff diagnose``, then one report. Each study's table and the report are
rewritten as the runs finish, so an interruption anywhere leaves a report of what was done and ``--resume``
continues from there."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from t2diff.compare import CompareOptions, compare, resolve_entries
from t2diff.compare.report import ModelResult
from t2diff.config import ConfigError
from t2diff.paired import RunRanks
from t2diff.provenance import provenance
from t2diff.reproduce.plan import (
    KINDS,
    PROTOCOLS,
    SCALES,
    RunSpec,
    Study,
    build_plan,
    study_key,
    study_overrides,
    write_run_config,
)


@dataclass
class ReproduceOptions:
    dataset: str  # ml-1m | kuairand
    out: Path
    config_root: Path = Path("configs")
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    scales: list[str] = field(default_factory=lambda: list(SCALES))
    tables: list[str] = field(default_factory=lambda: list(KINDS))
    budget_minutes: float | None = None  # training minutes of this invocation, shared equally by the runs it trains
    epochs: int | None = None  # cap on every run's train.epochs (None: each config's own)
    resume: bool = False
    only: list[str] = field(default_factory=list)  # study keys, kinds or study/label: train only these
    data: str | None = None  # data.path for every run (None: the configs')
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE for every run
    device: str = "cpu"
    figure4_users: int = 256
    with_ours: bool = True  # add our working variant (T2DiffCausal) to Table 2
    progress: bool = True
    infer_repeats: int = 5
    eval_users: int | None = None  # eval.max_users for every run (a reduced pass's seeded user sample)


@dataclass
class RunOutcome:
    """One row of a study as the report needs it."""

    spec: RunSpec
    run_dir: Path
    result: ModelResult | None  # None: no finished run
    status: str  # finished (how) / stopped by the budget / not trained
    ranks: RunRanks | None = None  # its test ranks (paired orderings); None: not finished or not rankable
    mask_seen: bool = False  # which of the ranks its reported metrics use (the run's eval.mask_seen)


@dataclass
class StudyOutcome:
    study: Study
    rows: list[RunOutcome]
    num_test: int | None
    # Table 2 only: the popularity ranking on the same test examples, {"unmasked" | "masked": {metric: value}}
    popularity: dict[str, dict[str, float]] | None = None


def _selected(opts: ReproduceOptions, st: Study, spec: RunSpec) -> bool:
    if not opts.only:
        return True
    return any(o in (st.key, st.kind, f"{st.key}/{spec.label}") for o in opts.only)


def run_status(run_dir: Path, cfg_epochs: int | None) -> str:
    """How a run ended, from its metrics.json: early stopping, all epochs, or stopped by the budget."""
    f = run_dir / "metrics.json"
    if not f.exists():
        return "interrupted (resumable with --resume)" if (run_dir / "last.pt").exists() else "not trained"
    out = json.loads(f.read_text())
    if out.get("stopped"):
        return f"unfinished: {out['stopped']}"
    n = int(out.get("epochs_run", 0))
    if "selected_epoch" in out and cfg_epochs is not None and n < cfg_epochs:
        return f"early stopping after {n} epochs (epoch {out['selected_epoch']} selected)"
    return f"all {n} epochs"


def reproduce(opts: ReproduceOptions, log: Callable[[str], None] = print) -> list[StudyOutcome]:
    from t2diff.reproduce.report import write_report

    started = time.perf_counter()
    prov = provenance()
    invocation = uuid.uuid4().hex  # this invocation's entry in the report's log of passes (a resume appends one)
    plan = build_plan(opts.config_root, opts.dataset, opts.protocols, opts.scales, opts.tables, opts.with_ours)
    if opts.only:
        known = {s.key for s in plan} | {s.kind for s in plan} | {f"{s.key}/{r.label}" for s in plan for r in s.runs}
        bad = sorted(set(opts.only) - known)
        if bad:
            raise ConfigError(f"--only {bad}: not in the plan; choose from {sorted(known)}")
    if not opts.resume and any((opts.out / s.key / "runs").exists() for s in plan):
        raise ConfigError(f"{opts.out} already holds runs: pass --resume to continue or reuse them, or use "
                          "another --out (nothing is overwritten)")
    if opts.eval_users is not None and opts.eval_users < 1:
        raise ConfigError(f"--eval-users must be >= 1, got {opts.eval_users}")
    shared = [*([f"data.path={opts.data}"] if opts.data else []),
              *([f"eval.max_users={opts.eval_users}"] if opts.eval_users else []), *opts.overrides]
    prepared = [_prepare_study(st, opts, shared) for st in plan]  # configs written, compare's run names known
    todo = [r for st, names in zip(plan, prepared, strict=True) for r in st.trained
            if _selected(opts, st, r) and _will_train(opts.out / st.key / "runs" / names[r.label])]
    budget: list[str] = []
    if opts.budget_minutes is not None:
        if opts.budget_minutes <= 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {opts.budget_minutes}")
        share = opts.budget_minutes / max(len(todo), 1)
        budget.append(f"train.max_minutes={share:.3f}")
        log(f"budget: {opts.budget_minutes} min for {len(todo)} run(s) to train: {share:.2f} min each "
            "(a run stops after the epoch that crosses it; at least one epoch)")
    if opts.epochs is not None:
        budget.append(f"train.epochs={opts.epochs}")
    outcomes: list[StudyOutcome] = []
    for st, names in zip(plan, prepared, strict=True):
        outcomes.append(_run_study(st, names, opts, budget, outcomes, log))
        write_report(opts, plan, outcomes, prov, started, finished=False, invocation=invocation)
    figures = _figure4(opts, {st.key: names for st, names in zip(plan, prepared, strict=True)}, log)
    write_report(opts, plan, outcomes, prov, started, finished=True, figures=figures, invocation=invocation)
    log(f"wrote {opts.out / 'REPORT.md'} ({(time.perf_counter() - started) / 60:.1f} min)")
    return outcomes


def _config_dir(opts: ReproduceOptions, st: Study) -> Path:
    return opts.out / st.key / "configs"


def _compare_options(st: Study, opts: ReproduceOptions, budget: list[str]) -> CompareOptions:
    folder = opts.out / st.key
    return CompareOptions(out=folder, configs=[_config_dir(opts, st) / f"{r.label}.yaml" for r in st.trained],
                          overrides=list(budget), paper=True, paper_dataset=opts.dataset,
                          max_over_epochs=st.protocol == "paper", resume=True, progress=opts.progress,
                          device=opts.device, infer_repeats=opts.infer_repeats)


def _prepare_study(st: Study, opts: ReproduceOptions, shared: list[str]) -> dict[str, str]:
    """Write the study's run configs; {label: compare's run name} (the model name, or the config's stem when two
    runs share a model)."""
    for r in st.trained:
        write_run_config(r, _config_dir(opts, st), [*study_overrides(opts.dataset, st.protocol), *shared])
    if not st.trained:
        return {}
    entries, _ = resolve_entries(_compare_options(st, opts, []))
    return {Path(e.config_path).stem: e.name for e in entries}


def _run_study(st: Study, names: dict[str, str], opts: ReproduceOptions, budget: list[str],
               done: list[StudyOutcome], log: Callable[[str], None]) -> StudyOutcome:
    folder = opts.out / st.key
    rows: list[RunOutcome] = []
    results: dict[str, ModelResult] = {}
    num_test = None
    if st.trained:
        copts = _compare_options(st, opts, budget)
        label_of = {n: lab for lab, n in names.items()}
        chosen = [names[r.label] for r in st.trained if _selected(opts, st, r)]
        if len(chosen) == len(st.trained):
            log(f"[{st.key}] {len(chosen)} run(s)")
            report = compare(copts, log)
        else:
            if chosen:
                log(f"[{st.key}] --only: {chosen}")
                compare(replace(copts, only=chosen), log)
            report = compare(replace(copts, no_train=True), log)
        num_test = report.num_test
        results = {label_of[r.name]: r for r in report.results}
    for r in st.runs:
        if r.reuse is not None:
            rows.append(_reused(r, done))
            continue
        run_dir = folder / "runs" / names[r.label]
        config = _config_dir(opts, st) / f"{r.label}.yaml"
        cfg_epochs = opts.epochs or _epochs(config)
        result = results.get(r.label)
        ranks, mask = _ranks(run_dir, config, opts, log) if result is not None else (None, False)
        rows.append(RunOutcome(r, run_dir, result, run_status(run_dir, cfg_epochs), ranks, mask))
    pop = _popularity(st, opts, log) if st.kind == "table2" and st.trained else None
    return StudyOutcome(st, rows, num_test, pop)


def _popularity(st: Study, opts: ReproduceOptions, log: Callable[[str], None]) -> dict[str, dict[str, float]] | None:
    """The study's popularity floor: its first run config's data, protocol and eval settings (every run of a
    study shares them). None, logged, when the data cannot be read."""
    from t2diff.config import load_config
    from t2diff.popularity import popularity_floor
    from t2diff.run import load_dataset

    try:
        cfg = load_config(_config_dir(opts, st) / f"{st.trained[0].label}.yaml")
        metrics = tuple(f"{m}@{k}" for k in cfg.eval.ks for m in ("recall", "ndcg"))
        out = popularity_floor(cfg, load_dataset(opts.data or cfg.data.path), metrics)
        out.pop("num_test")
        return out
    except Exception as e:  # noqa: BLE001 - the report is still written; the line says the floor is missing
        log(f"[{st.key}] popularity floor unavailable ({type(e).__name__}: {e})")
        return None


def run_mask_seen(run_dir: Path, config: Path) -> bool:
    """The eval.mask_seen its reported metrics used: the run's own saved config.yaml, which holds what ``compare``
    imposed on every row (its FORCED settings take the first model's mask); the study's config only when the run
    has none."""
    from t2diff.config import load_config

    own = run_dir / "config.yaml"
    return bool(load_config(own if own.exists() else config).eval.mask_seen)


def _ranks(run_dir: Path, config: Path, opts: ReproduceOptions, log: Callable[[str], None]
           ) -> tuple[RunRanks | None, bool]:
    """A finished run's test ranks (cached in the run) for the paired orderings; None, logged, if ranking fails:
    the report then falls back to unpaired standard errors for that run."""
    from t2diff.run_ranks import cached_test_ranks

    try:
        return cached_test_ranks(run_dir, opts.data), run_mask_seen(run_dir, config)
    except Exception as e:  # noqa: BLE001 - a report must still be written; the fallback is labelled
        log(f"[{run_dir}] test ranks unavailable ({type(e).__name__}: {e}); its orderings use unpaired SE")
        return None, False


def _will_train(run_dir: Path) -> bool:
    """Whether this invocation trains the run: none yet, interrupted, or stopped by an earlier budget."""
    f = run_dir / "metrics.json"
    return not f.exists() or bool(json.loads(f.read_text()).get("stopped"))


def _reused(r: RunSpec, done: list[StudyOutcome]) -> RunOutcome:
    key, label = r.reuse.split("/", 1)  # type: ignore[union-attr]
    for so in done:
        if so.study.key == key:
            for row in so.rows:
                if row.spec.label == label:
                    return RunOutcome(r, row.run_dir, row.result, f"{row.status} (the {key} run)", row.ranks,
                                      row.mask_seen)
    return RunOutcome(r, Path(), None, f"not run ({key} is not in this plan)")


def _epochs(config: Path) -> int | None:
    import yaml

    raw: dict[str, Any] = yaml.safe_load(config.read_text()) or {}
    return (raw.get("train") or {}).get("epochs")


def _figure4(opts: ReproduceOptions, names: dict[str, dict[str, str]], log: Callable[[str], None]) -> dict[str, Path]:
    """Figure 4 (cosine of z0_hat to z0 along the reverse chain) for each scale's Table 2 T2Diff run (paper
    protocol); rebuilt whenever the run is newer than the figure."""
    from t2diff.cli import main

    out: dict[str, Path] = {}
    for scale in opts.scales:
        key = study_key("table2", "paper", scale)
        if "t2diff" not in names.get(key, {}):  # that study is not in the plan, or has no T2Diff config
            continue
        run = opts.out / key / "runs" / names[key]["t2diff"]  # compare's run name for the label
        if not (run / "metrics.json").exists():
            continue
        fig = opts.out / f"figure4-{scale}"
        png = fig / "diffusion_cosine_trace.png"
        if not png.exists() or png.stat().st_mtime < (run / "metrics.json").stat().st_mtime:
            log(f"[figure4-{scale}] diagnose {run}")
            args = ["diagnose", str(run), "--users", str(opts.figure4_users), "--out", str(fig), "--no-progress"]
            if opts.data:
                args += ["--data", opts.data]
            if main(args) != 0:
                log(f"[figure4-{scale}] diagnose failed; the report lists it as missing")
                continue
        out[scale] = fig
    return out
