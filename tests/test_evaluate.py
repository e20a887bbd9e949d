"""Evaluation computes only what it ranks (the last position; batches as wide as their longest history) and
gives exactly what the full computation gives."""

from __future__ import annotations

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
