"""Row-sparse item-table updates (train.item_updates): the same gradient as dense, lazy Adam equal to Adam on
rows every step touches, untouched rows left alone, clipping over sparse gradients, a clear error where sparse
cannot apply, and a sparse run that trains and resumes."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config

from t2diff.data.batching import make_batch
from t2diff.data.protocols import leave_one_out
from t2diff.optim import Optimizer, resolve_item_updates, sparse_item_table
from t2diff.run import assemble
from t2diff.train import Trainer, TrainingError

SAMPLED = ("train.loss=sampled", "train.negative_sampler=uniform")


def _model_and_batch(prepared, *extra):
    torch.manual_seed(0)
    parts = assemble(tiny_config(prepared, "sasrec", *SAMPLED, *extra))
    ex = leave_one_out(parts.ds).test
    batch = make_batch(parts.ds, ex.users[:16], ex.positions[:16], parts.cfg.data.max_len)
    return parts, batch


def _step_grads(model, batch, seed=1):
    torch.manual_seed(seed)  # same dropout masks and negative draws in both runs
    loss, _ = model.loss(batch)
    loss.backward()
    return loss


def test_sparse_gradient_equals_the_dense_one(synthetic_prepared):
    parts, batch = _model_and_batch(synthetic_prepared, "train.num_negatives=8")
    dense = parts.model.train()
    sparse = copy.deepcopy(dense)
    Optimizer(sparse, 1e-3, sparse=True)  # switches the table and the loss to sparse gathers
    l_d, l_s = _step_grads(dense, batch), _step_grads(sparse, batch)
    torch.testing.assert_close(l_s, l_d)
    g = sparse.item_emb.weight.grad
    assert g.is_sparse
    touched = torch.unique(g.coalesce().indices()[0])
    assert len(touched) < dense.item_emb.weight.shape[0]  # only some rows, and exactly the rows dense touches
    torch.testing.assert_close(g.to_dense(), dense.item_emb.weight.grad)
    assert set(touched.tolist()) == set(torch.nonzero(dense.item_emb.weight.grad.abs().sum(1)).flatten().tolist())
    for (n, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        if n != "item_emb.weight":
            torch.testing.assert_close(q.grad, p.grad)


def test_lazy_adam_equals_adam_on_rows_touched_every_step_and_leaves_the_others(synthetic_prepared):
    parts, batch = _model_and_batch(synthetic_prepared, "train.num_negatives=4000")  # every item, every step
    dense = parts.model.train()
    sparse = copy.deepcopy(dense)
    before_training = dense.item_emb.weight.detach().clone()
    opt_d, opt_s = Optimizer(dense, 1e-2), Optimizer(sparse, 1e-2, sparse=True)
    assert opt_s.is_sparse and not opt_d.is_sparse
    for step in range(3):
        for m, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            _step_grads(m, batch, seed=step)
            opt.clip_grad_norm(0.5)  # clipping sees the same norm either way
            opt.step()
    # the item table follows dense Adam (the other parameters are stepped by the same Adam in both, but some,
    # e.g. the attention's key bias, have an analytically zero gradient whose rounding noise Adam amplifies)
    torch.testing.assert_close(sparse.item_emb.weight, dense.item_emb.weight, rtol=1e-5, atol=1e-6)
    assert not torch.equal(sparse.item_emb.weight, before_training)

    # a row no step touches: lazy Adam leaves it (and its moments) alone; dense Adam keeps moving it
    before = sparse.item_emb.weight.detach().clone()
    parts1, few = _model_and_batch(synthetic_prepared, "train.num_negatives=1")
    few.seq[:, :-2] = 0  # two behaviours and their targets per row: most rows of the table go untouched
    few.pos_targets[:, :-2] = 0
    dense.tower_loss_fn, sparse.tower_loss_fn = parts1.model.tower_loss_fn, copy.deepcopy(parts1.model.tower_loss_fn)
    sparse.tower_loss_fn.sparse_grad = True
    opt_s.zero_grad()
    _step_grads(sparse, few, seed=9)
    rows = set(sparse.item_emb.weight.grad.coalesce().indices()[0].tolist())
    opt_s.step()
    after = sparse.item_emb.weight.detach()
    untouched = [r for r in range(1, after.shape[0]) if r not in rows]
    assert len(untouched) > 5 and torch.equal(after[untouched], before[untouched])
    opt_d.zero_grad()
    _step_grads(dense, few, seed=9)
    d_before = dense.item_emb.weight.detach().clone()
    opt_d.step()
    assert not torch.equal(dense.item_emb.weight.detach()[untouched], d_before[untouched])


def test_item_updates_resolution_and_errors(synthetic_prepared):
    parts, _ = _model_and_batch(synthetic_prepared)
    m = parts.model
    assert sparse_item_table(m) is m.item_emb
    assert resolve_item_updates("auto", m, "sampled", 0.0)[0] is False  # a tiny catalogue: dense pays as well
    assert resolve_item_updates("sparse", m, "sampled", 0.0)[0] is True
    with pytest.raises(ValueError, match="train.loss=full"):
        resolve_item_updates("sparse", m, "full", 0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        resolve_item_updates("sparse", m, "sampled", 1e-4)
    bert = assemble(tiny_config(synthetic_prepared, "bert4rec", *SAMPLED)).model  # scores a slice of its table
    assert sparse_item_table(bert) is None
    with pytest.raises(ValueError, match="does not score against"):
        resolve_item_updates("sparse", bert, "sampled", 0.0)


def test_sparse_run_trains_and_resumes_to_the_same_result(synthetic_prepared, tmp_path):
    cfg = tiny_config(synthetic_prepared, "sasrec", *SAMPLED, "train.item_updates=sparse", "train.epochs=3")
    quiet = {"progress": False, "log": lambda s: None}
    full = Trainer(cfg, tmp_path / "a", **quiet).fit()
    assert full["item_updates"] == "train.item_updates=sparse"
    Trainer(tiny_config(synthetic_prepared, "sasrec", *SAMPLED, "train.item_updates=sparse",
                                "train.epochs=2"), tmp_path / "b", **quiet).fit()
    resumed = Trainer(cfg, tmp_path / "b", **quiet).fit(resume=True)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    dense_cfg = tiny_config(synthetic_prepared, "sasrec", *SAMPLED, "train.item_updates=dense", "train.epochs=3")
    with pytest.raises(TrainingError, match="another config"):
        Trainer(dense_cfg, tmp_path / "b", **quiet).fit(resume=True)
    with pytest.raises(TrainingError, match="train.loss=full"):
        Trainer(tiny_config(synthetic_prepared, "sasrec", "train.item_updates=sparse"), tmp_path / "c", **quiet)
