"""Full-ranking evaluation: every item scored for every example, in memory-bounded chunks of users.

One matrix product per chunk and a comparison against the target's score; no sort of the catalogue. Ties
and non-finite scores are ranked against the model (``t2diff.metrics``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from t2diff.batch import Batch
from t2diff.data.batching import make_batch
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Examples
from t2diff.metrics import metrics_from_ranks, ranks_from_scores
from t2diff.models.base import SeqRecModel


@dataclass
class Ranking:
    """Per-example results of a full ranking ([E] each)."""

    ranks: np.ndarray  # int64, 1 = best, pessimistic ties
    tied: np.ndarray  # bool: the target shared its score with another item (the tie rule changed its rank)
    nonfinite: np.ndarray  # bool: the model scored the target NaN or infinite (given the worst rank)

    def __len__(self) -> int:
        return len(self.ranks)

    def metrics(self, ks: list[int]) -> dict[str, float]:
        out: dict = metrics_from_ranks(self.ranks, ks)
        out["num_examples"] = len(self)
        out["num_tied_targets"] = int(self.tied.sum())
        out["num_nonfinite_targets"] = int(self.nonfinite.sum())
        return out

    def stacked(self) -> np.ndarray:  # [E, 3] int64, for gathering across processes
        return np.stack([self.ranks, self.tied, self.nonfinite], axis=1).astype(np.int64)

    @staticmethod
    def from_stacked(a: np.ndarray) -> Ranking:
        return Ranking(a[:, 0].copy(), a[:, 1].astype(bool), a[:, 2].astype(bool))


@torch.no_grad()
def rank_examples(model: SeqRecModel, ds: PreparedDataset, ex: Examples, max_len: int, batch_size: int = 512,
                  mask_seen: bool = False, progress: bool = False, device: str = "cpu",
                  user_fn: Callable[[Batch], torch.Tensor] | None = None) -> Ranking:
    """Rank of each example's target among all items (1 = best). ``user_fn`` replaces
    ``model.user_embeddings`` (batch -> [B, D]), e.g. to rank with a modified user tower (diagnostics).
    Warns when the model produced NaN or infinite scores."""
    user_fn = user_fn or model.user_embeddings
    was_training = model.training
    model.eval()
    items = model.item_embeddings().to(device)  # [I+1, D], computed once
    ranks = np.empty(len(ex), dtype=np.int64)
    tied = np.zeros(len(ex), dtype=bool)
    nonfinite = np.zeros(len(ex), dtype=bool)
    bad_rows = 0  # examples with any non-finite item score
    # a padding-free model gives the same output without its all-padding leading columns: rank examples in
    # order of history length, each batch only as wide as its longest window (at L = 200 most of the work)
    window = np.minimum(ex.positions, max_len)  # [E] behaviours before each target that reach the model
    crop = bool(getattr(model, "padding_free", False))
    order = np.argsort(window, kind="stable") if crop else np.arange(len(ex))
    starts = range(0, len(ex), batch_size)
    for s in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        sel = order[s: s + batch_size]
        u, j = ex.users[sel], ex.positions[sel]
        # one padding column to spare: a model may shift its window (BERT4Rec appends its [MASK] slot)
        width = min(max_len, int(window[sel].max()) + 1) if crop else max_len
        batch = make_batch(ds, u, j, width).to(device)
        scores = user_fn(batch) @ items.T  # [B, I+1]
        fin = torch.isfinite(scores[:, 1:])  # [B, I], the model's own scores (before masking)
        nonfinite[sel] = (~fin.gather(1, batch.target[:, None] - 1)[:, 0]).cpu().numpy()
        bad_rows += int((~fin.all(dim=1)).sum())
        if mask_seen:
            _mask_seen(scores, ds, u, j)
        r, t = ranks_from_scores(scores, batch.target)
        ranks[sel] = r.cpu().numpy()
        tied[sel] = t.cpu().numpy()
    model.train(was_training)
    if bad_rows:
        warnings.warn(f"the model scored NaN or infinite values for {bad_rows} of {len(ex)} examples "
                      f"({int(nonfinite.sum())} of them on the target, which gets the worst rank "
                      f"{ds.num_items})", RuntimeWarning, stacklevel=2)
    return Ranking(ranks, tied, nonfinite)


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
    return rank_examples(model, ds, ex, max_len, batch_size, mask_seen, progress, device).metrics(ks)
