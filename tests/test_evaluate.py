"""Evaluation computes only what it ranks (the last position; batches as wide as their longest history) and
gives exactly what the full computation gives."""

from __future__ import annotations

import unittest.mock as mock

import numpy as np
import pytest
import torch
from conftest import tiny_config

from t2diff.data.protocols import leave_one_out
from t2diff.evaluate import rank_examples
from t2diff.run import assemble


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_last_position_and_cropped_batches_rank_exactly_as_the_full_pass(synthetic_prepared, name, monkeypatch):
    torch.manual_seed(0)
    parts = assemble(tiny_config(synthetic_prepared, name, "data.max_len=40"))  # wider than most histories
    model, ds = parts.model.eval(), parts.ds
    ex = leave_one_out(ds).test
    fast = rank_examples(model, ds, ex, 40, batch_size=7)
    assert type(model).padding_free

    def full(batch):  # every position of every block, at the full window width
        if name == "bert4rec":
            seq = torch.cat([batch.seq[:, 1:], torch.full_like(batch.seq[:, :1], model.mask_id)], dim=1)
            return model.encode(seq)[:, -1]
        return model.encode(batch.seq)[:, -1]

    monkeypatch.setattr(type(model), "padding_free", False)
    slow = rank_examples(model, ds, ex, 40, batch_size=7, user_fn=full)
    np.testing.assert_array_equal(fast.ranks, slow.ranks)
    with torch.no_grad():
        from t2diff.data.batching import make_batch

        b = make_batch(ds, ex.users, ex.positions, 40)
        torch.testing.assert_close(model.user_embeddings(b), full(b), rtol=1e-5, atol=1e-5)


def _case(b: int, num_items: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, generator=g)
    items = torch.randn(num_items + 1, d, generator=g)
    items[5:9] = items[3]  # exact ties with item 3 (bitwise equal rows score equally)
    items[17] = items[2]
    u[4] = 0.0  # a user whose every score is 0: all tied, the worst rank
    targets = torch.randint(1, num_items + 1, (b,), generator=g)
    targets[0], targets[1], targets[4] = 3, 2, 11
    return u, items, targets


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
@pytest.mark.parametrize("masked", [False, True])
def test_blocked_ranking_equals_the_full_score_matrix(block, masked):
    from t2diff.ranking import rank_blocked, rank_full

    u, items, targets = _case(12, 300, 8, seed=block)
    items[40, 0] = float("nan")  # a NaN item: a tie against the model for every user
    u[6, 1] = float("inf")  # a user with infinite / NaN scores, target included
    seen = None
    if masked:
        rows = torch.tensor([0, 0, 1, 2, 2, 3, 6, 9])
        cols = torch.tensor([5, 40, 2, int(targets[2]), 17, 299, 1, 300])  # row 2's target is seen: masked
        seen = (rows, cols)
    ref = rank_full(u.clone(), items, targets, None if seen is None else (seen[0].clone(), seen[1].clone()))
    got = rank_blocked(u, items, targets, seen, block)
    assert torch.equal(got.ranks, ref.ranks) and torch.equal(got.tied, ref.tied)
    assert torch.equal(got.nonfinite, ref.nonfinite) and got.bad_rows == ref.bad_rows
    assert ref.tied[0] and ref.ranks[4] == 300 and ref.nonfinite[6]  # the case exercises the rules
    if masked:
        assert ref.ranks[2] == 300


@pytest.mark.parametrize("case", ["finite", "overflow", "nan_item", "inf_user"])
@pytest.mark.parametrize("masked", [False, True])
def test_blocked_ranking_with_the_norm_bound_equals_the_full_matrix(case, masked):
    """With ``items_norm`` the blocks skip their non-finite checks only where Cauchy-Schwarz proves every
    score finite; scores that overflow to inf (finite inputs), NaN items and inf users still rank exactly."""
    from t2diff.ranking import item_norm_max, rank_blocked, rank_full

    u, items, targets = _case(12, 300, 8, seed=11)
    if case == "overflow":
        items[50:60] *= 1e16  # finite vectors whose scores with a large user overflow to +-inf
        u[3] *= 1e24
        items[70] = items[50]  # and a tie among them
        targets[3] = 50
    elif case == "nan_item":
        items[40, 0] = float("nan")
    elif case == "inf_user":
        u[6, 1] = float("inf")
    seen = (torch.tensor([0, 2, 3, 9]), torch.tensor([5, int(targets[2]), 70, 300])) if masked else None
    norm = item_norm_max(items)
    assert norm < 1e30 if case != "nan_item" else norm == float("inf")  # NaN: the bound proves nothing
    ref = rank_full(u.clone(), items, targets, None if seen is None else (seen[0].clone(), seen[1].clone()))
    got = rank_blocked(u, items, targets, seen, 64, norm)
    assert torch.equal(got.ranks, ref.ranks) and torch.equal(got.tied, ref.tied)
    assert torch.equal(got.nonfinite, ref.nonfinite) and got.bad_rows == ref.bad_rows
    assert (ref.bad_rows > 0) == (case != "finite")


def test_blocked_ranking_rerank_rows_whose_target_score_differs():
    """A BLAS whose [B, B] product rounds the target's score differently from the block entry: the rows are
    detected and ranked by the full rule."""
    from t2diff import ranking

    u, items, targets = _case(10, 200, 8, seed=3)
    ref = ranking.rank_full(u.clone(), items, targets, None)
    real_mm = torch.Tensor.__matmul__
    calls = {"n": 0}

    def skew(a, b):  # perturb only the first product (the [B, B] one giving the target scores)
        calls["n"] += 1
        out = real_mm(a, b)
        return out + 0.5 if calls["n"] == 1 else out

    with mock.patch.object(torch.Tensor, "__matmul__", skew):
        got = ranking.rank_blocked(u, items, targets, None, 32)
    assert calls["n"] > 2
    assert torch.equal(got.ranks, ref.ranks) and torch.equal(got.tied, ref.tied)


@pytest.mark.parametrize("masked", [False, True])
def test_evaluation_in_item_blocks_is_identical(synthetic_prepared, masked):
    torch.manual_seed(0)
    parts = assemble(tiny_config(synthetic_prepared, "sasrec"))
    model, ds = parts.model.eval(), parts.ds
    ex = leave_one_out(ds).test
    L = parts.cfg.data.max_len
    whole = rank_examples(model, ds, ex, L, batch_size=16, mask_seen=masked, item_block=None)
    for block in (3, 50):
        part = rank_examples(model, ds, ex, L, batch_size=16, mask_seen=masked, item_block=block)
        np.testing.assert_array_equal(part.ranks, whole.ranks)
        np.testing.assert_array_equal(part.tied, whole.tied)


@pytest.mark.parametrize("name", sorted(__import__("conftest").TINY_MODEL))
def test_tower_sub_batches_rank_exactly_as_one_call(synthetic_prepared, name):
    """rank_examples runs the user tower on sub-batches of a chunk (``tower_batch``): every registered model gives
    the same ranks as with one call per chunk (a row's vector does not depend on the rows beside it)."""
    torch.manual_seed(0)
    parts = assemble(tiny_config(synthetic_prepared, name))
    model, ds = parts.model.eval(), parts.ds
    ex = leave_one_out(ds).test
    one = rank_examples(model, ds, ex, 12, batch_size=32, tower_batch=None)
    sub = rank_examples(model, ds, ex, 12, batch_size=32, tower_batch=5)
    np.testing.assert_array_equal(one.ranks, sub.ranks)
    np.testing.assert_array_equal(one.tied, sub.tied)
