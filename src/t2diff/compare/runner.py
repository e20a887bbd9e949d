"""Running the comparison: train each model (or reuse / extend its finished run: --resume, --no-train, --only),
time it, measure its user tower's inference time, and rewrite the report after every model."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from t2diff.compare.paper import paper_row, paper_table2
from t2diff.compare.report import ModelResult, Report
from t2diff.compare.resolve import CompareOptions, Entry, resolve_entries
from t2diff.config import ConfigError, same_run
from t2diff.data.batching import make_batch
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Examples
from t2diff.models.base import SeqRecModel, count_parameters
from t2diff.run import build_from_checkpoint, build_split
from t2diff.train import Trainer


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


def _history(run_dir: Path) -> list[dict[str, Any]]:
    f = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def _reported(out: dict[str, Any]) -> str:
    if "selected_epoch" in out:
        return f"test @ epoch {out['selected_epoch']} (selected on {out.get('selected_on', 'valid')})"
    return f"test @ last epoch ({out.get('epochs_run', '?')})"


def run_model(e: Entry, opts: CompareOptions, log: Callable[[str], None] = print) -> ModelResult | None:
    """Train (or, with --resume and a finished run, reload) one model; measure its size and inference time.
    None with ``no_train`` when the model has no finished run."""
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
        if saved is None or not same_run(saved, cfg):
            raise ConfigError(f"{run_dir} was trained with another config; remove it or use another --out")
        # same run with a larger train.epochs / patience: the Trainer extends it; otherwise reuse it as it is
        skipped = same_run(saved, cfg, ignore_budget=False) or opts.no_train  # --no-train: as is, never extended
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
        name=e.name, model=cfg.model["name"], config=str(e.config_path), test=out["test"], reported=_reported(out),
        epochs_run=int(out.get("epochs_run", len(hist))), params=count_parameters(model),
        train_seconds=round(sum(h.get("train_seconds", 0.0) for h in hist), 2),
        wall_seconds=None if wall is None else round(wall, 2), infer_ms=infer, max_over_epochs=mx, skipped=skipped,
        paper_method=paper_row(cfg))


def compare(opts: CompareOptions, log: Callable[[str], None] = print) -> Report:
    """Run the comparison; compare.md / compare.csv are rewritten after every model (a partial table survives
    an interruption; --resume continues)."""
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
