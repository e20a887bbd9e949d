"""The memory model's item-table terms equal what a real model and its optimisers allocate."""

from __future__ import annotations

import torch

from t2diff.batch import Batch
from t2diff.losses import Objective
from t2diff.memory import max_items_per_worker, worker_memory
from t2diff.models.base import DataInfo
from t2diff.models.sasrec import SASRec, SASRecConfig
from t2diff.optim import Optimizer


def _bytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        t = t.coalesce()
        return t.values().numel() * t.values().element_size() + t.indices()[0].numel() * 8
    return t.numel() * t.element_size()


def test_table_gradient_and_optimizer_terms_match_real_tensors():
    n, d, b, l, neg = 5000, 16, 4, 10, 64
    torch.manual_seed(0)
    for sparse in (False, True):
        model = SASRec(SASRecConfig(hidden=d, num_heads=1, ffn_dim=32), DataInfo(num_items=n, num_users=9, max_len=l),
                       Objective("sampled", neg, "uniform"))
        opt = Optimizer(model, 1e-3, sparse=sparse)
        batch = Batch.from_histories([list(range(1 + 7 * r, 1 + 7 * r + l)) for r in range(b)], l)
        batch.pos_targets = torch.roll(batch.seq, -1, 1).clamp(min=1)
        opt.zero_grad()
        model.loss(batch)[0].backward()
        opt.step()
        w = model.item_emb.weight
        m = worker_memory(n, d, sparse=sparse, batch=b, max_len=l, negatives=neg)
        assert m.table == _bytes(w)
        state = (opt.sparse or opt.dense).state[w]
        assert m.optimizer == _bytes(state["exp_avg"]) + _bytes(state["exp_avg_sq"])
        if sparse:
            assert 0 < _bytes(w.grad) <= m.table_grad < m.table // 10
        else:
            assert m.table_grad == _bytes(w.grad)


def test_replicated_table_limit():
    gib = 2**30
    dense, sparse = (max_items_per_worker(32 * gib, 64, sparse=s) for s in (False, True))
    assert dense == int(16 * gib / (64 * 4 * 5)) and sparse == int(16 * gib / (64 * 4 * 3)) and sparse > dense
