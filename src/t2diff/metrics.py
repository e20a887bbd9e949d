"""Ranking metrics from one rank per example (rank = 1 + number of items scored strictly higher)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

METRICS = ("recall", "mrr", "ndcg")


def ranks_from_scores(scores: Tensor, targets: Tensor) -> Tensor:
    """scores [B, I+1] (column 0 = padding, already -inf), targets [B] -> ranks [B] (1 = best).

    rank = 1 + #items scored strictly higher than the target. Ties do not flatter the model beyond that:
    a target tied with others keeps the rank of the first of them, as the issue's definition says."""
    t = scores.gather(1, targets[:, None])  # [B, 1]
    return 1 + (scores > t).sum(dim=1)


def metrics_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Recall@K (one target: hit rate), MRR@K, NDCG@K averaged over examples."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"recall@{k}"] = float(hit.mean()) if len(r) else 0.0
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / r, 0.0).mean()) if len(r) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).mean()) if len(r) else 0.0
    return out

