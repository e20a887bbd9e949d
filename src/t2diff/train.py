"""The training loop: Adam, full softmax by default, validation-only model selection, per-epoch atomic
checkpoints with resume, seeded reproducibility, JSON-lines metrics log."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from t2diff import checkpoint, distributed, run, runtime
from t2diff.config import ExperimentConfig, same_run
from t2diff.data.batching import make_batch
from t2diff.data.protocols import Examples, authors_test_counts
from t2diff.evaluate import Ranking, rank_examples
from t2diff.metrics import TIE_RULE, TIE_RULE_TEXT, is_metric
from t2diff.optim import Optimizer, resolve_item_updates
from t2diff.precision import autocast

MAX_LABEL = "test_max_over_epochs (the authors' reporting: selected on the test set, optimistic)"
# eval.authors_test_batch (paper protocol): the test metrics as the authors' test() loop counts the rows
AUTHORS_LOOP_LABEL = "test_authors_double_count (the authors' test() loop: its first batch counted again, optimistic)"
AUTHORS_LOOP_DEFINITION = "test_authors_double_count_definition"
AUTHORS_BOTH_LABEL = ("test_authors_double_count_max_over_epochs (what the authors' code reports: the double count, "
                      "each metric's max over epochs; optimistic)")
HISTORY_FILE_DEFINITION = ("data.paper.history_order=file: each user's history in the order of the source rows "
                           "(the authors read ratings.dat in file order), not by time; the split's positions are "
                           "the same, the items at them differ")


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_value: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    lr_scale: float = 1.0  # train.lr times this is the current learning rate (train.lr_plateau_*)
    plateau_epochs: int = 0  # epochs without improvement since the last improvement or lr cut
    history: list[dict[str, Any]] = field(default_factory=list)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)

EVAL_SAMPLE_DEFINITION = ("validation and test on a seeded random sample of the test users (eval.max_users), "
                          "the same users in both; an estimate of the full set's metrics with a larger standard "
                          "error, not the full evaluation")


class Trainer:
    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, progress: bool = True, device: str = "cpu",
                 log: Any = print) -> None:
        self.dist, device = distributed.init_from_env(device)
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self.progress = progress and self.dist.is_main
        self.log = log if self.dist.is_main else (lambda s: None)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        runtime.tune_allocator()  # freed tensor memory reused instead of page-faulted again (t2diff.runtime)
        torch.manual_seed(cfg.train.seed)
        parts = run.assemble(cfg)
        self.ds, self.split, self.model = parts.ds, parts.split, parts.model.to(device)
        self.data_record = run.checkpoint_data(parts.ds, parts.info)  # makes every checkpoint self-contained
        t = cfg.train
        try:
            sparse, self.item_updates = resolve_item_updates(t.item_updates, self.model, t.loss, t.weight_decay)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        # before DDP wraps the model: its reducer reads which embeddings yield sparse gradients
        self.opt = Optimizer(self.model, t.lr, t.weight_decay, sparse)
        if sparse:
            self.log(f"item table: row-sparse updates with lazy Adam ({self.item_updates})")
        self.train_module = distributed.wrap(self.model, self.dist, device)
        self.state = TrainState()
        self.stopped: str | None = None
        self.epoch_terms: dict[str, float] = {}  # the last epoch's mean of each logged loss term
        self.ks = sorted(set(cfg.eval.ks) | {int(cfg.train.select_metric.split("@")[1])})
        ap = cfg.train.all_positions
        self.all_positions = self.split.fixed_train is None if ap is None else ap

    # ---- checkpoints -------------------------------------------------------------------------------
    def _save(self, path: Path, with_optimizer: bool) -> None:
        if not self.dist.is_main:  # rank 0 writes; the others wait at the barrier
            self.dist.barrier()
            return
        obj: dict[str, Any] = {"config": self.cfg.to_dict(), "model_state": self.model.state_dict(),
                               "epoch": self.state.epoch, "state": self.state.__dict__.copy(),
                               "data": self.data_record}
        if with_optimizer:
            obj["optimizer_state"] = self.opt.state_dict()
        checkpoint.save_atomic(obj, path)
        self.dist.barrier()

    def _commit_epoch(self, improved: bool) -> None:
        """End-of-epoch writes, in an order that keeps the run directory consistent after a kill at any point
        (checkpoint.resolve): new best -> best.pt.pending; last.pt (the commit point, recording the selected
        epoch); promote pending -> best.pt; metrics.jsonl rewritten from last.pt's history."""
        pending = self.run_dir / checkpoint.PENDING
        if improved:
            self._save(pending, with_optimizer=False)
        self._save(self.run_dir / "last.pt", with_optimizer=True)
        if self.dist.is_main:
            if improved:
                checkpoint.promote(pending, self.run_dir / "best.pt")
            self._write_log()

    def _write_log(self) -> None:
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.state.history))
        checkpoint.promote(tmp, self.run_dir / "metrics.jsonl")

    def resume(self) -> None:
        ck = checkpoint.load(self.run_dir / "last.pt")
        if not same_run(ck["config"], self.cfg):
            raise TrainingError(f"{self.run_dir / 'last.pt'} was written with another config; resume with the "
                                "same config (only train.epochs and train.patience may change, to extend a run) "
                                "or use a new --run-dir")
        self.model.load_state_dict(ck["model_state"])
        self.opt.load_state_dict(ck["optimizer_state"])
        self.state = TrainState(**ck["state"])
        self.opt.set_lr(self.cfg.train.lr * self.state.lr_scale)  # a plateau cut carries over
        if self.dist.is_main:  # finish what a kill interrupted (see _commit_epoch)
            pending = self.run_dir / checkpoint.PENDING
            if pending.is_file():
                if checkpoint.resolve(self.run_dir) == pending:  # last.pt vouches for it: promote
                    checkpoint.promote(pending, self.run_dir / "best.pt")
                else:  # written before a kill that last.pt never recorded: the epoch is retrained
                    pending.unlink()
            self._write_log()  # an epoch cut off mid-way never appears twice, a committed one always
        self.log(f"resumed from {self.run_dir / 'last.pt'} after epoch {self.state.epoch}")

    # ---- one epoch ---------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        rng = np.random.default_rng(_epoch_seed(cfg.train.seed, epoch))
        torch.manual_seed(_epoch_seed(cfg.train.seed, epoch))  # dropout etc.: resume-proof
        opts = cfg.data.options
        ex = self.split.train_examples(rng, self.model.causal, cfg.data.max_len, opts.train_targets,
                                       getattr(opts, "causal_windows", "all") == "last",
                                       getattr(opts, "noncausal_targets", "sampled") == "every")
        order = rng.permutation(len(ex))[distributed.shard(len(ex), self.dist)]
        users, pos = ex.users[order], ex.positions[order]
        self.model.train()
        total, steps = 0.0, 0
        terms: dict[str, float] = {}  # each loss term the model logs (tower, kl, energy, ...), summed over steps
        bs = max(1, cfg.train.batch_size // self.dist.world)  # train.batch_size is the global batch
        bar = tqdm(range(0, len(users), bs), desc=f"epoch {epoch}", disable=not self.progress, leave=False)
        for s in bar:
            batch = make_batch(self.ds, users[s: s + bs], pos[s: s + bs], cfg.data.max_len).to(self.device)
            if not self.all_positions:  # only the example's own target counts
                batch.pos_targets.zero_()
                batch.pos_targets[:, -1] = batch.target
            with autocast(cfg.train.precision, self.device):
                loss, parts = self.train_module(batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch}, step {steps} ({parts}); the last "
                    f"checkpoint {self.run_dir / 'last.pt'} is intact. Lower train.lr or set train.grad_clip.")
            self.opt.zero_grad()
            loss.backward()
            if cfg.train.grad_clip:
                self.opt.clip_grad_norm(cfg.train.grad_clip)
            self.opt.step()
            total += loss.item()
            steps += 1
            for k, v in parts.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):  # loss() logs floats (.item())
                    terms[k] = terms.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{total / steps:.4f}")
        # this rank's epoch means, written beside train_loss so a run's loss terms survive it (metrics.jsonl)
        self.epoch_terms = {k: round(v / max(steps, 1), 6) for k, v in sorted(terms.items())}
        return total / max(steps, 1)

    def eval_on(self, which: str) -> dict[str, float]:
        return self.rank_on(which).metrics(self.ks)

    def test_row(self) -> dict[str, Any]:
        """The test metrics of the current weights under "test"; with ``eval.authors_test_batch`` also the authors'
        count of the same ranks (one ranking for both: a sampling model's inference is not repeated)."""
        ranking = self.rank_on("test")
        row: dict[str, Any] = {"test": ranking.metrics(self.ks)}
        if self.cfg.eval.authors_test_batch is not None:
            row[AUTHORS_LOOP_LABEL] = authors_loop_metrics(ranking, self.cfg.eval.authors_test_batch, self.ks)
        return row

    def rank_on(self, which: str) -> Ranking:
        """Full ranking, per example in split order; under DDP each rank ranks a shard and the ranks are gathered,
        so the result is exactly that of one process with the same weights."""
        ex = self.split.valid if which == "valid" else self.split.test
        assert ex is not None
        idx = np.arange(self.dist.rank, len(ex), self.dist.world)
        mine = Examples(ex.users[idx], ex.positions[idx])
        local = rank_examples(self.model, self.ds, mine, self.cfg.data.max_len, self.cfg.eval.batch_size,
                              self.cfg.eval.mask_seen, self.progress, self.device,
                              item_block=self.cfg.eval.item_block)
        gathered = distributed.gather_ranks(local.stacked(), idx, len(ex), self.dist)
        return Ranking.from_stacked(gathered)

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.run_dir / "last.pt").exists():
            if not resume:
                raise TrainingError(f"{self.run_dir} already holds a run; pass --resume to continue it or "
                                    "choose another --run-dir")
            self.resume()
        elif resume:
            self.log(f"nothing to resume in {self.run_dir}; starting from scratch")
        st = self.state  # bound after a resume replaced it
        if self.dist.is_main:
            (self.run_dir / "config.yaml").write_text(_yaml(cfg.to_dict()))
        has_valid = self.split.valid is not None
        started, first_epoch = time.perf_counter(), st.epoch
        self.stopped = None  # why this invocation ended early (train.max_minutes), for metrics.json
        while st.epoch < cfg.train.epochs and not (has_valid and st.bad_epochs >= cfg.train.patience):
            epoch = st.epoch + 1
            t0 = time.perf_counter()
            loss = self.train_epoch(epoch)
            t_train = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch, "train_loss": round(loss, 6), "train_seconds": round(t_train, 2)}
            if self.epoch_terms:
                row["train_terms"] = self.epoch_terms
            if has_valid:
                row["valid"] = self.eval_on("valid")
                value = row["valid"][cfg.train.select_metric]
                improved = value > st.best_value
                if improved:
                    st.best_value, st.best_epoch, st.bad_epochs, st.plateau_epochs = value, epoch, 0, 0
                else:
                    st.bad_epochs += 1
                    self._plateau(row)
            else:  # paper protocol: no validation set; the test set is reported each epoch, never selected on
                row.update(self.test_row())
                improved = False
            row["seconds"] = round(time.perf_counter() - t0, 2)
            st.epoch = epoch
            st.history.append(row)
            self._commit_epoch(improved)
            spent = time.perf_counter() - started
            budget = cfg.train.max_minutes
            self.log(f"epoch {epoch}/{cfg.train.epochs} " + _summary(row, cfg.train.select_metric)
                     + f" | {spent / 60:.1f} min so far, " + eta_text(spent, epoch - first_epoch,
                                                                   cfg.train.epochs - epoch, budget))
            if self.dist.any(budget is not None and spent >= 60 * budget) and st.epoch < cfg.train.epochs:
                self.stopped = f"train.max_minutes={budget} reached after epoch {epoch} ({spent / 60:.1f} min)"
                self.log(f"stopping: {self.stopped}; --resume continues the run")
                break
        return self.finish()

    def _plateau(self, row: dict[str, Any]) -> None:
        """``train.lr_plateau_patience`` epochs without a better validation value: the learning rate is
        multiplied by ``train.lr_plateau_factor`` for the next epochs (torch's ReduceLROnPlateau rule, kept in
        TrainState so that a resumed run cuts at the same epochs)."""
        t, st = self.cfg.train, self.state
        if t.lr_plateau_patience is None:
            return
        st.plateau_epochs += 1
        if st.plateau_epochs >= t.lr_plateau_patience:
            st.lr_scale *= t.lr_plateau_factor
            st.plateau_epochs = 0
            self.opt.set_lr(t.lr * st.lr_scale)
            row["lr_after"] = t.lr * st.lr_scale
            self.log(f"validation {t.select_metric} flat for {t.lr_plateau_patience} epochs: "
                     f"learning rate now {t.lr * st.lr_scale:.3g}")

    def finish(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        out: dict[str, Any] = {"protocol": cfg.data.protocol, "model": cfg.model["name"], "epochs_run": st.epoch,
                               "num_test_examples": len(self.split.test), "mask_seen": cfg.eval.mask_seen,
                               "tie_rule": TIE_RULE, "tie_rule_definition": TIE_RULE_TEXT}
        if self.split.valid is not None:
            ck = checkpoint.load(self.run_dir)  # the selected epoch's weights (best.pt)
            self.model.load_state_dict(ck["model_state"])
            out["selected_epoch"] = st.best_epoch
            out["selected_on"] = f"valid {cfg.train.select_metric}"
            out["valid"] = self.eval_on("valid")
            out["test"] = self.eval_on("test")
        else:
            last = st.history[-1] if st.history else self.test_row()
            out["test"] = last["test"]
            out["test_from"] = "last epoch (no validation set under the paper protocol)"
            if cfg.train.report_max_over_epochs and st.history:
                out[MAX_LABEL] = _max_over_epochs(st.history, "test")
            batch = cfg.eval.authors_test_batch
            if batch is not None:
                out[AUTHORS_LOOP_LABEL] = last[AUTHORS_LOOP_LABEL]
                out[AUTHORS_LOOP_DEFINITION] = authors_loop_definition(len(self.split.test), batch)
                if cfg.train.report_max_over_epochs and st.history:
                    out[AUTHORS_BOTH_LABEL] = _max_over_epochs(st.history, AUTHORS_LOOP_LABEL)
        if self.split.eval_users_of is not None:  # a reduced pass's sample, never to be mistaken for the full set
            out["eval_users"] = {"sampled": int(len(np.unique(self.split.test.users))),
                                 "of": self.split.eval_users_of, "seed": cfg.eval.user_sample_seed,
                                 "definition": EVAL_SAMPLE_DEFINITION}
        out["history_order"] = self.ds.history_order  # what the split ran on (data.paper.history_order)
        if self.ds.history_order == "file":
            out["history_order_definition"] = HISTORY_FILE_DEFINITION
        out["world_size"] = self.dist.world
        out["item_updates"] = self.item_updates
        out["precision"] = cfg.train.precision
        out["allocator"] = runtime.allocator_state()
        if self.stopped:
            out["stopped"] = self.stopped  # the budget ended this invocation; the run is resumable
        if self.dist.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        self.dist.barrier()
        return out


def authors_loop_metrics(ranking: Ranking, batch: int, ks: list[int]) -> dict[str, float]:
    """The metrics of ``ranking`` (rows in split order) with each row counted as often as the authors' test()
    counts it at test batch size ``batch`` (``authors_test_counts``); num_examples is their denominator."""
    counts = authors_test_counts(len(ranking), batch)
    return Ranking(np.repeat(ranking.ranks, counts), np.repeat(ranking.tied, counts),
                   np.repeat(ranking.nonfinite, counts)).metrics(ks)


def authors_loop_definition(num_rows: int, batch: int) -> str:
    """One line saying which rows ``authors_loop_metrics`` counted how often, for metrics.json."""
    counts = authors_test_counts(num_rows, batch)
    head = (f"eval.authors_test_batch={batch}: the {num_rows} test rows (split order) counted as the authors' test() "
            f"counts them, its start index advancing only after its loop over full batches: ")
    if num_rows <= batch:
        return head + "every row once (no more than one batch), so equal to 'test'"
    rest = "once" if counts[-1] == 1 else "never"
    return (head + f"rows 1-{batch} {int(counts[0])} times, rows {batch + 1}-{num_rows} {rest}; denominator "
            f"{int(counts.sum())} (the honest numbers are 'test')")


def _max_over_epochs(history: list[dict[str, Any]], key: str) -> dict[str, float]:
    return {k: max(h[key][k] for h in history) for k in history[-1][key] if is_metric(k)}


def eta_text(spent: float, done: int, left: int, budget_minutes: float | None) -> str:
    """The progress line's ETA: the remaining epochs at this invocation's mean epoch time, or, when
    ``train.max_minutes`` ends the run first, the rest of the budget plus the one epoch that crosses it (early
    stopping can end it sooner either way)."""
    per_epoch = spent / max(done, 1)
    eta, why = per_epoch * left, "train.epochs"
    if budget_minutes is not None and left > 0:
        to_budget = max(0.0, 60 * budget_minutes - spent) + per_epoch
        if to_budget < eta:
            eta, why = to_budget, "train.max_minutes"
    return f"ETA {eta / 60:.1f} min at most ({why})"


def _summary(row: dict[str, Any], select: str) -> str:
    part = "valid" if "valid" in row else "test"
    m = row[part]
    keys = [k for k in m if k.startswith(("recall", "ndcg", "mrr"))]
    return (f"loss {row['train_loss']:.4f} | {part} "
            + " ".join(f"{k} {m[k]:.4f}" for k in keys) + f" | {row['seconds']:.1f}s")


def _yaml(d: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
