"""Full-ranking evaluation: every item scored for every example, in memory-bounded chunks of users.

One matrix product per chunk and a comparison against the target's score; no sort of the catalogue."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from t2diff.batch import Batch
from t2diff.data.batching import make_batch
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Examples
from t2diff.metrics import metrics_from_ranks, ranks_from_scores
from t2diff.models.base import SeqRecModel


@torch.no_grad()
def rank_examples(model: SeqRecModel, ds: PreparedDataset, ex: Examples, max_len: int, batch_size: int = 512,
                  mask_seen: bool = False, progress: bool = False, device: str = "cpu",
                  user_fn: Callable[[Batch], torch.Tensor] | None = None) -> np.ndarray:
    """Rank of each example's target among all items ([E] int64, 1 = best). ``user_fn`` replaces
    ``model.user_embeddings`` (batch -> [B, D]), e.g. to rank with a modified user tower (diagnostics)."""
    user_fn = user_fn or model.user_embeddings
    was_training = model.training
    model.eval()
    items = model.item_embeddings().to(device)  # [I+1, D], computed once
    ranks = np.empty(len(ex), dtype=np.int64)
    starts = range(0, len(ex), batch_size)
    for s in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        u, j = ex.users[s: s + batch_size], ex.positions[s: s + batch_size]
        batch = make_batch(ds, u, j, max_len).to(device)
        scores = user_fn(batch) @ items.T  # [B, I+1]
        scores[:, 0] = -torch.inf  # the padding id is never ranked
        if mask_seen:
            _mask_seen(scores, ds, u, j)
        ranks[s: s + len(u)] = ranks_from_scores(scores, batch.target).cpu().numpy()
    model.train(was_training)
    return ranks


def _mask_seen(scores: torch.Tensor, ds: PreparedDataset, users: np.ndarray, positions: np.ndarray) -> None:
    """Hide every item the user interacted with before the target (the whole past, not only the window).
    A repeated target is hidden too and so gets the worst rank: masking never flatters the model."""
    rows, cols = [], []
    for r, (u, j) in enumerate(zip(users, positions, strict=True)):
        seen = np.unique(ds.history(int(u))[:j])
        rows.append(np.full(len(seen), r))
        cols.append(seen)
    if rows:
        scores[torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))] = -torch.inf


def evaluate(model: SeqRecModel, ds: PreparedDataset, ex: Examples, max_len: int, ks: list[int],
             batch_size: int = 512, mask_seen: bool = False, progress: bool = False,
             device: str = "cpu") -> dict[str, float]:
    ranks = rank_examples(model, ds, ex, max_len, batch_size, mask_seen, progress, device)
    out = metrics_from_ranks(ranks, ks)
    out["num_examples"] = len(ex)
    return out
