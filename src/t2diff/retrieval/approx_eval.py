"""Approximate full-ranking evaluation through an exported ANN index (``t2diff evaluate --index``).

Each example's user vector searches the index for its top K (K = the largest cut-off; seen items excluded
when masking); the target's rank is its place in that list, or "beyond K" when the index did not return it.
So Recall / MRR / NDCG at every K' <= K are those of the ANN retrieval a served model would give: an
approximation of the exact full ranking, labelled as such in the output, with the index's measured recall@K
against exact search (the same vectors, brute force, the same exclusions) on a sample of the examples, and
the exact metrics of that sample beside the approximate ones. Ties inside the index's list are broken by
ascending item id (``ItemIndex.search``), not by the pessimistic rule of the exact evaluator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from t2diff.data.batching import make_batch
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Examples
from t2diff.metrics import metrics_from_ranks
from t2diff.models.base import SeqRecModel
from t2diff.retrieval.index import ItemIndex, recall_at_k


def check_index_matches(index: ItemIndex, items: np.ndarray, atol: float = 1e-5) -> None:
    """The index must hold this model's item vectors under internal ids 1..I (as ``t2diff export`` writes)."""
    num = items.shape[0] - 1
    if index.size != num or index.dim != items.shape[1]:
        raise ValueError(f"the index holds {index.size} items of dimension {index.dim}; the model has {num} of "
                         f"dimension {items.shape[1]}: export the index from this checkpoint")
    stored = index.reconstruct()  # [N, D], row i = ids[i]
    diff = float(np.abs(stored - items[index.ids]).max()) if num else 0.0
    if diff > atol:
        raise ValueError(f"the index's vectors differ from this checkpoint's item embeddings (max abs diff "
                         f"{diff:.3g}): it was exported from another model")


def _seen_sets(ds: PreparedDataset, users: np.ndarray, positions: np.ndarray) -> list[set[int]]:
    return [set(np.unique(ds.history(int(u))[:j]).tolist()) for u, j in zip(users, positions, strict=True)]


@torch.no_grad()
def evaluate_with_index(model: SeqRecModel, ds: PreparedDataset, ex: Examples, max_len: int, ks: list[int],
                        index: ItemIndex, mask_seen: bool = False, batch_size: int = 512,
                        recall_examples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Approximate metrics (see the module docstring), labelled, with the index's measured recall."""
    model.eval()
    items = model.item_embeddings().detach().cpu().numpy().astype(np.float32)  # [I+1, D]
    check_index_matches(index, items)
    k = max(ks)
    n = len(ex)
    ranks = np.empty(n, dtype=np.int64)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, recall_examples), replace=False))
    in_sample = np.zeros(n, dtype=bool)
    in_sample[sample] = True
    approx_ids, exact_ids, exact_ranks = [], [], []
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        u, j = ex.users[sl], ex.positions[sl]
        batch = make_batch(ds, u, j, max_len)
        q = model.user_embeddings(batch).float().cpu().numpy()  # [B, D]
        seen = _seen_sets(ds, u, j) if mask_seen else None
        _, ids = index.search(q, k, exclude=seen)  # [B, K]
        tgt = batch.target.numpy()
        hit = ids == tgt[:, None]
        ranks[sl] = np.where(hit.any(1), hit.argmax(1) + 1, k + 1)  # k + 1: beyond the list
        rows = np.flatnonzero(in_sample[sl])
        if len(rows):
            extra = max((len(seen[r]) for r in rows), default=0) if seen else 0
            _, found = index.exact_search(q[rows], min(index.size, k + extra))  # [R, >= K]
            ex_ids = np.full((len(rows), k), -1, dtype=np.int64)
            for i, r in enumerate(rows):  # the same exclusions as the approximate search
                keep = found[i][~np.isin(found[i], list(seen[r]))] if seen else found[i]
                ex_ids[i, : min(k, len(keep))] = keep[:k]
            approx_ids.append(ids[rows])
            exact_ids.append(ex_ids)
            eh = ex_ids == tgt[rows, None]
            exact_ranks.append(np.where(eh.any(1), eh.argmax(1) + 1, k + 1))
    out: dict[str, Any] = metrics_from_ranks(ranks, ks)
    out["num_examples"] = n
    a, e, r = np.concatenate(approx_ids), np.concatenate(exact_ids), np.concatenate(exact_ranks)
    return {
        "ranking": f"approximate: top-{k} of the {index.kind} ANN index {index.cfg.to_dict()}, not the exact full "
                   "ranking; a target the index did not return counts as beyond the list",
        "metrics": out,
        f"ann_recall@{k}": recall_at_k(a, e, k),
        "ann_recall_examples": int(len(sample)),
        "exact_search_metrics_on_those_examples": metrics_from_ranks(r, ks),
        "approximate_metrics_on_those_examples": metrics_from_ranks(ranks[sample], ks),
    }
