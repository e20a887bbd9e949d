"""The popularity floor of a split: every test target ranked by how often its item occurs in the training part of
the split (``Split.train_item_counts``), one list for every user, over all items, with the evaluator's rule for
ties and masking (``t2diff.metrics.ranks_from_scores``). A model that does not clear it has learnt
nothing personal; ``t2diff reproduce`` prints it under each Table 2 and ``benchmarks/popularity_floor.py`` alone."""

from __future__ import annotations

import numpy as np
import torch

from t2diff.config import ExperimentConfig
from t2diff.data.prepared import PreparedDataset
from t2diff.metrics import ranks_from_scores
from t2diff.paired import per_example


def popularity_ranks(counts: np.ndarray, targets: np.ndarray, seen: list[np.ndarray] | None,
                     chunk: int = 1024) -> np.ndarray:
    """1-based rank of each target among items 1..I by count (counts: [I+1], index 0 the pad), by the evaluator's
    own rule (``t2diff.metrics.ranks_from_scores``: ties pessimistic); seen: per example, the items to mask before
    ranking, as the evaluator masks them (a target among them gets the worst rank). [E]"""
    score = torch.as_tensor(counts, dtype=torch.float64)  # [I+1]
    out = np.empty(len(targets), dtype=np.int64)
    for a in range(0, len(targets), chunk):
        t = torch.as_tensor(targets[a: a + chunk], dtype=torch.long)  # [c]
        s = score.expand(len(t), -1).clone()  # [c, I+1]: one list for every user
        if seen is not None:
            for r, it in enumerate(seen[a: a + chunk]):
                it = it[it > 0]
                if len(it):
                    s[r, torch.as_tensor(it, dtype=torch.long)] = -torch.inf
        out[a: a + chunk] = ranks_from_scores(s, t)[0].numpy()
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
