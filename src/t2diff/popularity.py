"""The popularity floor of a split: every test target ranked by how often its item occurs in the training part of
the split (``Split.train_item_counts``), one list for every user, over all items, with the evaluator's rule for
ties (rank = 1 + #items counted more + #other items counted the same). A model that does not clear it has learnt
nothing personal; ``t2diff reproduce`` prints it under each Table 2 and ``benchmarks/popularity_floor.py`` alone."""

from __future__ import annotations

import numpy as np

from t2diff.config import ExperimentConfig
from t2diff.data.prepared import PreparedDataset
from t2diff.paired import per_example


def popularity_ranks(counts: np.ndarray, targets: np.ndarray, seen: list[np.ndarray] | None) -> np.ndarray:
    """1-based rank of each target among items 1..I by count (counts: [I+1], index 0 the pad), ties pessimistic;
    seen: per example, the items to drop before ranking (the target itself is never dropped). [E]"""
    c = counts[1:].astype(np.float64)  # [I]
    order = np.sort(c)
    out = np.empty(len(targets), dtype=np.int64)
    for i, t in enumerate(targets):
        ct = c[t - 1]
        right = np.searchsorted(order, ct, side="right")
        higher, tied = len(c) - right, right - np.searchsorted(order, ct, side="left") - 1
        if seen is not None:
            s = np.unique(seen[i][(seen[i] != t) & (seen[i] > 0)])
            cs = c[s - 1]
            higher -= int((cs > ct).sum())
            tied -= int((cs == ct).sum())
        out[i] = 1 + higher + tied
    return out


def popularity_floor(cfg: ExperimentConfig, ds: PreparedDataset, metrics: tuple[str, ...]
                     ) -> dict[str, dict[str, float]]:
    """{"unmasked" | "masked": {metric: mean over the test split}} of the popularity ranking under cfg's protocol
    (eval.max_users sample included), with a "num_test" entry."""
    from t2diff.run import build_split

    split = build_split(cfg, ds)
    counts = split.train_item_counts(ds)
    test = split.test
    hist = [ds.history(int(u)) for u in test.users]
    targets = np.array([h[int(q)] for h, q in zip(hist, test.positions, strict=True)], dtype=np.int64)
    seen = [h[:int(q)] for h, q in zip(hist, test.positions, strict=True)]
    out: dict[str, dict[str, float]] = {"num_test": {"n": float(len(test))}}
    for masked in (False, True):
        per = per_example(popularity_ranks(counts, targets, seen if masked else None), metrics)
        out["masked" if masked else "unmasked"] = {m: float(v.mean()) for m, v in per.items()}
    return out
