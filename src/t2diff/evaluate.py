"""Full-ranking evaluation: every item scored for every example, in memory-bounded chunks of users and, for
large catalogues, blocks of items (``t2diff.ranking``).

Matrix products and comparisons against the target's score; no sort of the catalogue. Ties
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
from t2diff.metrics import metrics_from_ranks
from t2diff.models.base import SeqRecModel
from t2diff.ranking import DEFAULT_ITEM_BLOCK, item_norm_max, rank_blocked, rank_full

# examples per user-tower call within a ranking chunk: a 128 x 50 window's FFN activations (6.6 MB) stay in
# cache where 512 x 50 (26 MB) does not; 1-thread process time at 1 M items, SASRec L = 50: 0.200 s vs 0.220 s
# per 2,048 users, with bit-identical vectors (benchmarks/results/scale_*.md for the 2-thread end to end)
DEFAULT_TOWER_BATCH = 128


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
                  user_fn: Callable[[Batch], torch.Tensor] | None = None,
                  item_block: int | None = DEFAULT_ITEM_BLOCK,
                  tower_batch: int | None = DEFAULT_TOWER_BATCH) -> Ranking:
    """Rank of each example's target among all items (1 = best). ``user_fn`` replaces
    ``model.user_embeddings`` (batch -> [B, D]), e.g. to rank with a modified user tower (diagnostics).
    ``item_block``: score at most that many items at a time (memory O(batch_size * item_block), identical
    results; ``t2diff.ranking``); None = the whole catalogue per user chunk. ``tower_batch``: the user tower runs
    on at most that many examples at a time within a chunk (its activations stay in cache; a row's vector does
    not depend on its batch, tested per model); None = the whole chunk. Warns when the model produced NaN or
    infinite scores."""
    user_fn = user_fn or model.user_embeddings
    was_training = model.training
    model.eval()
    items = model.item_embeddings().to(device)  # [I+1, D], computed once
    blocked = item_block is not None and item_block < items.shape[0] - 1
    items_norm = item_norm_max(items) if blocked else None
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
        seen = _seen_pairs(ds, u, j, device) if mask_seen else None
        step = tower_batch or len(sel)
        vecs, targets = [], []
        for t in range(0, len(sel), step):
            part = sel[t: t + step]
            # one padding column to spare: a model may shift its window (BERT4Rec appends its [MASK] slot)
            width = min(max_len, int(window[part].max()) + 1) if crop else max_len
            batch = make_batch(ds, ex.users[part], ex.positions[part], width).to(device)
            vecs.append(user_fn(batch))  # [b, D]
            targets.append(batch.target)
        user_vecs = vecs[0] if len(vecs) == 1 else torch.cat(vecs)  # [B, D]
        target = targets[0] if len(targets) == 1 else torch.cat(targets)  # [B]
        if blocked:
            res = rank_blocked(user_vecs, items, target, seen, item_block, items_norm)
        else:
            res = rank_full(user_vecs, items, target, seen)
        ranks[sel] = res.ranks.cpu().numpy()
        tied[sel] = res.tied.cpu().numpy()
        nonfinite[sel] = res.nonfinite.cpu().numpy()
        bad_rows += res.bad_rows
    model.train(was_training)
    if bad_rows:
        warnings.warn(f"the model scored NaN or infinite values for {bad_rows} of {len(ex)} examples "
                      f"({int(nonfinite.sum())} of them on the target, which gets the worst rank "
                      f"{ds.num_items})", RuntimeWarning, stacklevel=2)
    return Ranking(ranks, tied, nonfinite)


def _seen_pairs(ds: PreparedDataset, users: np.ndarray, positions: np.ndarray,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, item ids) of every item each example's user interacted with before the target (the whole past,
    not only the window), to be masked. A repeated target is masked too and so gets the worst rank: masking
    never flatters the model."""
    rows, cols = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for r, (u, j) in enumerate(zip(users, positions, strict=True)):
        seen = np.unique(ds.history(int(u))[:j])
        rows.append(np.full(len(seen), r, dtype=np.int64))
        cols.append(seen.astype(np.int64))
    return (torch.from_numpy(np.concatenate(rows)).to(device), torch.from_numpy(np.concatenate(cols)).to(device))


def evaluate(model: SeqRecModel, ds: PreparedDataset, ex: Examples, max_len: int, ks: list[int],
             batch_size: int = 512, mask_seen: bool = False, progress: bool = False,
             device: str = "cpu") -> dict[str, float]:
    return rank_examples(model, ds, ex, max_len, batch_size, mask_seen, progress, device).metrics(ks)
