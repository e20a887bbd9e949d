"""Ranking metrics from one rank per example.

The tie rule is pessimistic (``TIE_RULE``): rank = 1 + #items scored strictly higher + #OTHER items scored
exactly the same as the target. A target tied with every item therefore gets the worst rank, so a collapsed
model (constant scores) scores zero, never a perfect hit rate. Non-finite scores never flatter either:
another item's NaN counts as a tie against the model, and a NaN or infinite target score gets the worst
rank (the number of real items). Column 0 (padding) is never ranked and never counted.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

METRICS = ("recall", "mrr", "ndcg")
TIE_RULE = "pessimistic"  # named in metrics.json; see the module docstring
TIE_RULE_TEXT = ("rank = 1 + #items scored higher + #other items tied with the target (ties count against the "
                 "model; a NaN item counts as tied); a NaN or infinite target score gets the worst rank")


def ranks_from_scores(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """scores [B, I+1] (column 0 = padding, ignored), targets [B] in 1..I -> (ranks [B] int64, 1 = best;
    tied [B] bool: the target shared its score with another item, or another item scored NaN).

    ``tied`` marks exactly the examples whose rank differs from the optimistic 1 + #strictly-higher rule."""
    real = scores[:, 1:]  # [B, I]
    t = scores.gather(1, targets[:, None])  # [B, 1]
    higher = (real > t).sum(dim=1)  # [B]
    others_tied = (real == t).sum(dim=1) - 1 + torch.isnan(real).sum(dim=1)  # [B], the target excluded
    worst = torch.full_like(higher, real.shape[1])
    finite = torch.isfinite(t[:, 0])  # [B]
    ranks = torch.where(finite, 1 + higher + others_tied, worst)
    tied = finite & (others_tied > 0)
    return ranks, tied


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


def is_metric(key: str) -> bool:
    """``recall@10`` and the like (not the counts stored beside them)."""
    return key.split("@")[0] in METRICS
