import json

import numpy as np
import pytest
import torch
from conftest import TINY_SASREC, tiny_config

from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import leave_one_out
from t2diff.evaluate import rank_examples
from t2diff.run import build_from_checkpoint
from t2diff.train import Trainer, TrainingError


def _cfg(path, *extra):
    return tiny_config(path, "sasrec", "train.select_metric=ndcg@10", *extra)


def test_train_learns_and_writes_outputs(synthetic_prepared, tmp_path):
    out = Trainer(_cfg(synthetic_prepared, "train.epochs=8"), tmp_path / "run", progress=False,
                  log=lambda s: None).fit()
    ds = PreparedDataset.load(synthetic_prepared)
    # the synthetic users walk through items in fixed strides: far better than random (10/num_items)
    assert out["test"]["recall@10"] > 3 * 10 / ds.num_items
    for f in ("last.pt", "best.pt", "metrics.json", "metrics.jsonl", "config.yaml"):
        assert (tmp_path / "run" / f).exists()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert out["selected_epoch"] == max(rows, key=lambda r: r["valid"]["ndcg@10"])["epoch"]


def test_resume_after_interruption_matches_uninterrupted(synthetic_prepared, tmp_path, monkeypatch):
    cfg = _cfg(synthetic_prepared, "train.epochs=4")
    full = Trainer(cfg, tmp_path / "a", progress=False, log=lambda s: None).fit()

    calls = {"n": 0}
    real = Trainer.train_epoch

    def crash_in_third_epoch(self, epoch):
        calls["n"] += 1
        if epoch == 3:
            real(self, epoch)  # the epoch's updates happen but its checkpoint is never written
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "b", progress=False, log=lambda s: None).fit()
    monkeypatch.setattr(Trainer, "train_epoch", real)
    with pytest.raises(TrainingError, match="already holds a run"):
        Trainer(cfg, tmp_path / "b", progress=False, log=lambda s: None).fit()
    resumed = Trainer(cfg, tmp_path / "b", progress=False, log=lambda s: None).fit(resume=True)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert resumed["selected_epoch"] == full["selected_epoch"]
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 4


def test_seeded_runs_identical_and_paper_protocol(synthetic_prepared, tmp_path):
    cfg = _cfg(synthetic_prepared, "train.epochs=2", "data.protocol=paper", "train.report_max_over_epochs=true")
    a = Trainer(cfg, tmp_path / "a", progress=False, log=lambda s: None).fit()
    b = Trainer(cfg, tmp_path / "b", progress=False, log=lambda s: None).fit()
    assert a["test"] == b["test"]
    assert "valid" not in a and a["test_from"].startswith("last epoch")
    label = [k for k in a if k.startswith("test_max_over_epochs")]
    assert label and "optimistic" in label[0]
    assert a[label[0]]["recall@10"] >= a["test"]["recall@10"]


def test_non_finite_loss_is_a_clear_error(synthetic_prepared, tmp_path):
    cfg = _cfg(synthetic_prepared, "train.epochs=1", "train.lr=1e30", "train.grad_clip=null")
    tr = Trainer(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    with torch.no_grad():
        tr.model.item_emb.weight.mul_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch 1, step 0"):
        tr.fit()


def test_evaluation_independent_of_batch_size_and_never_ranks_padding(synthetic_prepared, tmp_path):
    Trainer(_cfg(synthetic_prepared, "train.epochs=1"), tmp_path / "run", progress=False, log=lambda s: None).fit()
    model, cfg, ds = build_from_checkpoint(tmp_path / "run")
    ex = leave_one_out(ds).test
    ranks = [rank_examples(model, ds, ex, cfg.data.max_len, batch_size=bs).ranks for bs in (1, 7, 1000)]
    assert np.array_equal(ranks[0], ranks[1]) and np.array_equal(ranks[0], ranks[2])
    assert ranks[0].max() <= ds.num_items and ranks[0].min() >= 1
    masked = rank_examples(model, ds, ex, cfg.data.max_len, mask_seen=True).ranks
    seen = np.array([ds.history(u)[j] in set(ds.history(u)[:j]) for u, j in zip(ex.users, ex.positions,
                                                                                  strict=True)])
    assert seen.any() and (~seen).any()
    assert (masked[~seen] <= ranks[0][~seen]).all()  # hiding seen items can only move an unseen target up
    assert (masked[seen] == ds.num_items).all()  # a hidden (repeated) target ties with the hidden items: worst


def test_cli_end_to_end(tmp_path):
    from conftest import write_synthetic_log

    from t2diff.cli import main

    log = write_synthetic_log(tmp_path / "log.csv")
    assert main(["prepare", "generic", "--input", str(log), "--user-col", "user", "--item-col", "item",
                 "--time-col", "ts", "--out", str(tmp_path / "p")]) == 0
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--no-progress", f"data.path={tmp_path / 'p'}", *TINY_SASREC,
                 "train.epochs=2"]) == 0
    assert main(["evaluate", str(run), "--no-progress", "--ks", "1", "5"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["evaluate"]["metrics"]) >= {"recall@1", "mrr@5", "ndcg@5"}
    assert m["evaluate"]["metrics"]["recall@5"] == pytest.approx(m["test"]["recall@5"])
    assert main(["train", "--run-dir", str(tmp_path / "r2"), "data.nope=1"]) == 2


def test_paper_protocol_causal_loss_only_on_fixed_targets(synthetic_prepared, tmp_path, monkeypatch):
    seen = []
    tr = Trainer(_cfg(synthetic_prepared, "train.epochs=1", "data.protocol=paper"), tmp_path / "r",
                 progress=False, log=lambda s: None)
    real = tr.model.loss

    def spy(batch):
        seen.append(batch.pos_targets.clone())
        assert (batch.pos_targets[:, -1] == batch.target).all()
        return real(batch)

    monkeypatch.setattr(tr.model, "loss", spy)
    tr.train_epoch(1)
    assert seen and all(int((p[:, :-1] != 0).sum()) == 0 for p in seen)


def test_resume_can_extend_the_epoch_budget_but_not_change_the_model(synthetic_prepared, tmp_path):
    Trainer(_cfg(synthetic_prepared, "train.epochs=1"), tmp_path / "r", progress=False, log=lambda s: None).fit()
    with pytest.raises(TrainingError, match="another config"):
        Trainer(_cfg(synthetic_prepared, "train.epochs=2", "model.hidden=8"), tmp_path / "r", progress=False,
                log=lambda s: None).fit(resume=True)
    out = Trainer(_cfg(synthetic_prepared, "train.epochs=2", "train.patience=4"), tmp_path / "r", progress=False,
                  log=lambda s: None).fit(resume=True)
    assert out["epochs_run"] == 2
    # the machine's thread count is not part of the run either (a run moved to a machine with other cores)
    out = Trainer(_cfg(synthetic_prepared, "train.epochs=3", "train.threads=2"), tmp_path / "r", progress=False,
                  log=lambda s: None).fit(resume=True)
    assert out["epochs_run"] == 3


class _Killed(BaseException):
    """A kill -9 between two writes (BaseException: nothing in the trainer may catch it)."""


@pytest.mark.parametrize("point", ["before_last", "before_promote", "before_log"])
def test_run_directory_consistent_after_a_kill_between_writes(synthetic_prepared, tmp_path, monkeypatch, point):
    from t2diff import checkpoint

    cfg = _cfg(synthetic_prepared, "train.epochs=4")
    full = Trainer(cfg, tmp_path / "a", progress=False, log=lambda s: None).fit()
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    best = -1.0
    improving = []
    for r in rows:
        if r["valid"]["ndcg@10"] > best:
            best = r["valid"]["ndcg@10"]
            improving.append(r["epoch"])
    epoch = max(improving)
    assert epoch >= 2  # a new best after an earlier one, so best.pt is rewritten in the killed epoch

    real_save, real_promote = checkpoint.save_atomic, checkpoint.promote

    def save(obj, path):
        if point == "before_last" and path.name == "last.pt" and obj["epoch"] == epoch:
            raise _Killed
        real_save(obj, path)

    def promote(src, dst):
        at = {"before_promote": "best.pt", "before_log": "metrics.jsonl"}.get(point)
        if dst.name == at and checkpoint.torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == epoch:
            raise _Killed
        real_promote(src, dst)

    monkeypatch.setattr(checkpoint, "save_atomic", save)
    monkeypatch.setattr(checkpoint, "promote", promote)
    with pytest.raises(_Killed):
        Trainer(cfg, tmp_path / "b", progress=False, log=lambda s: None).fit()
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    monkeypatch.setattr(checkpoint, "promote", real_promote)

    run = tmp_path / "b"
    last = torch.load(run / "last.pt", weights_only=True)
    chosen = checkpoint.resolve(run)
    assert torch.load(chosen, weights_only=True)["epoch"] == last["state"]["best_epoch"]
    logged = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) <= last["epoch"] and last["state"]["best_epoch"] <= last["epoch"]
    if point == "before_last":  # the killed epoch's new best exists on disk but is never used
        assert (run / checkpoint.PENDING).exists() and last["epoch"] == epoch - 1 and max(logged) == epoch - 1
        assert chosen.name == "best.pt"
    elif point == "before_promote":
        assert chosen.name == checkpoint.PENDING and last["state"]["best_epoch"] == epoch
    # evaluate / export load what resolve chose
    model, _, _ = build_from_checkpoint(run)
    ref = torch.load(chosen, weights_only=True)["model_state"]
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())

    resumed = Trainer(cfg, run, progress=False, log=lambda s: None).fit(resume=True)
    assert resumed["test"] == full["test"] and resumed["selected_epoch"] == full["selected_epoch"]
    assert not (run / checkpoint.PENDING).exists()
    def strip(folder):  # the log without timings
        return [{k: v for k, v in json.loads(x).items() if "seconds" not in k}
                for x in (folder / "metrics.jsonl").read_text().splitlines()]

    assert strip(run) == strip(tmp_path / "a")


def test_tampered_run_directory_is_refused(synthetic_prepared, tmp_path):
    from t2diff import checkpoint

    Trainer(_cfg(synthetic_prepared, "train.epochs=2"), tmp_path / "run", progress=False, log=lambda s: None).fit()
    run = tmp_path / "run"
    ck = torch.load(run / "best.pt", weights_only=True)
    ck["epoch"] = 99
    torch.save(ck, run / "best.pt")
    with pytest.raises(checkpoint.CheckpointError, match="last.pt records epoch .* as the selected one"):
        checkpoint.resolve(run)


def test_max_minutes_stops_after_the_crossing_epoch_and_resumes_to_the_same_result(synthetic_prepared, tmp_path):
    full = Trainer(_cfg(synthetic_prepared, "train.epochs=3"), tmp_path / "a", progress=False,
                   log=lambda s: None).fit()
    logs: list[str] = []
    cut = Trainer(_cfg(synthetic_prepared, "train.epochs=3", "train.max_minutes=1e-6"), tmp_path / "b",
                  progress=False, log=logs.append).fit()
    assert cut["epochs_run"] == 1 and "train.max_minutes=1e-06 reached after epoch 1" in cut["stopped"]
    assert any("ETA" in line and line.startswith("epoch 1/3") for line in logs)
    resumed = Trainer(_cfg(synthetic_prepared, "train.epochs=3"), tmp_path / "b", progress=False,
                      log=lambda s: None).fit(resume=True)
    assert "stopped" not in resumed and resumed["epochs_run"] == 3
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]


def test_evaluate_masks_as_the_run_did_unless_told(synthetic_prepared, tmp_path, capsys):
    import json

    from t2diff.cli import main

    run = tmp_path / "run"
    Trainer(_cfg(synthetic_prepared, "eval.mask_seen=true"), run, progress=False, log=lambda s: None).fit()
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    assert "(seen items masked)" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--no-progress", "--no-mask-seen"]) == 0
    data = json.loads((run / "metrics.json").read_text())
    assert data["evaluate_mask_seen"]["mask_seen"] is True and data["evaluate"]["mask_seen"] is False
    assert data["evaluate_mask_seen"]["metrics"] == data["test"]  # the run's own test evaluation, masked


def test_bf16_precision_trains_and_is_recorded(synthetic_prepared, tmp_path):
    fp = Trainer(_cfg(synthetic_prepared, "train.epochs=3"), tmp_path / "a", progress=False,
                 log=lambda s: None).fit()
    bf = Trainer(_cfg(synthetic_prepared, "train.epochs=3", "train.precision=bf16"), tmp_path / "b",
                 progress=False, log=lambda s: None).fit()
    assert bf["precision"] == "bf16" and fp["precision"] == "fp32"
    ds = PreparedDataset.load(synthetic_prepared)
    assert bf["test"]["recall@10"] > 2 * 10 / ds.num_items  # it learns (random: 10 / num_items)
    assert abs(bf["test"]["ndcg@10"] - fp["test"]["ndcg@10"]) < 0.1
    # the parameters stay float32 (mixed precision, not a bf16 model)
    model = build_from_checkpoint(tmp_path / "b" / "best.pt")[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_lr_plateau_cuts_the_learning_rate_and_resume_keeps_it(synthetic_prepared, tmp_path, monkeypatch):
    script = dict(enumerate([0.1, 0.2, 0.15, 0.15, 0.3, 0.1, 0.1, 0.1], start=1))  # valid NDCG@10 by epoch
    real_eval = Trainer.eval_on

    def scripted(self, which):
        out = real_eval(self, which)
        v = script.get(self.state.epoch + 1) if which == "valid" else None  # the epoch being validated
        return out if v is None else {**out, "ndcg@10": v}

    seen_lr: dict[str, list[float]] = {"a": [], "b": []}
    real_epoch = Trainer.train_epoch

    def record(self, epoch):
        seen_lr[self.run_dir.name].append(self.opt.dense.param_groups[0]["lr"])
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "eval_on", scripted)
    monkeypatch.setattr(Trainer, "train_epoch", record)
    opts = ("train.lr=0.01", "train.lr_plateau_patience=2", "train.patience=10")
    Trainer(_cfg(synthetic_prepared, "train.epochs=8", *opts), tmp_path / "a", progress=False,
            log=lambda s: None).fit()
    # flat at epochs 3, 4 -> cut to 0.005 from epoch 5; improved at 5; flat 6, 7 -> 0.0025 for epoch 8
    assert seen_lr["a"] == pytest.approx([0.01] * 4 + [0.005] * 3 + [0.0025])
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("lr_after") for r in rows] == [None, None, None, 0.005, None, None, 0.0025, None]
    Trainer(_cfg(synthetic_prepared, "train.epochs=5", *opts), tmp_path / "b", progress=False,
            log=lambda s: None).fit()
    Trainer(_cfg(synthetic_prepared, "train.epochs=8", *opts), tmp_path / "b", progress=False,
            log=lambda s: None).fit(resume=True)
    assert seen_lr["b"] == seen_lr["a"]


def test_eta_counts_the_budget_when_it_ends_the_run_first() -> None:
    from t2diff.train import eta_text

    # 2 epochs in 60 s, 8 left: 240 s by epochs; a 3-minute budget ends it after 120 s more + the crossing epoch
    assert eta_text(60.0, 2, 8, 3.0) == "ETA 2.5 min at most (train.max_minutes)"
    assert eta_text(60.0, 2, 8, None) == "ETA 4.0 min at most (train.epochs)"
    assert eta_text(60.0, 2, 1, 3.0) == "ETA 0.5 min at most (train.epochs)"  # the epochs end it first
    assert eta_text(200.0, 2, 8, 3.0) == "ETA 1.7 min at most (train.max_minutes)"  # budget spent: one epoch


def test_each_loss_term_is_written_per_epoch(synthetic_prepared, tmp_path):
    Trainer(_cfg(synthetic_prepared, "train.epochs=2"), tmp_path / "s", progress=False, log=lambda s: None).fit()
    rows = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    # SASRec's only term is the tower loss: its epoch mean is train_loss itself
    assert [sorted(r["train_terms"]) for r in rows] == [["tower"]] * 2
    assert all(r["train_terms"]["tower"] == pytest.approx(r["train_loss"], abs=2e-6) for r in rows)
    cfg = tiny_config(synthetic_prepared, "t2diff_causal", "train.epochs=1", "model.train_draws=2",
                      "model.energy_weight=1.0")
    Trainer(cfg, tmp_path / "c", progress=False, log=lambda s: None).fit()
    (row,) = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    terms = row["train_terms"]
    assert {"tower", "denoise", "energy", "loss"} <= set(terms)
    assert terms["loss"] == pytest.approx(row["train_loss"], abs=2e-6)
    assert terms["tower"] > 0 and terms["loss"] > terms["tower"]  # the generator's terms add to the ranking loss
