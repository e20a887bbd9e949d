"""The popularity floor (t2diff.popularity): ranks by training count against hand-computed values, ties by the
evaluator's pessimistic rule, seen items dropped, and the floor on a real split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from t2diff.config import load_config
from t2diff.popularity import popularity_floor, popularity_ranks
from t2diff.run import build_split, load_dataset


def test_ranks_by_count_with_pessimistic_ties_and_seen_items_dropped() -> None:
    counts = np.array([0, 5, 9, 5, 1, 7])  # items 1..5; item 0 is the pad
    targets = np.array([2, 5, 1, 3, 4])
    # by count: 2 (9), 5 (7), then 1 and 3 tied at 5, then 4 (1); a tie counts the other tied item above
    assert popularity_ranks(counts, targets, None).tolist() == [1, 2, 4, 4, 5]
    seen = [np.array([5]), np.array([2, 0]), np.array([3]), np.array([]), np.array([2, 5])]
    # masked: item 5 (nothing above item 2 changes); 2 (item 5 is first); 3 (item 1's tie is gone); nothing;
    # 2 and 5 (item 4 moves up two)
    assert popularity_ranks(counts, targets, [s.astype(np.int64) for s in seen]).tolist() == [1, 1, 3, 4, 3]
    # a target among the seen items is masked too and gets the worst rank, as the evaluator does
    repeated = [np.array([2]), np.array([]), np.array([]), np.array([]), np.array([])]
    assert popularity_ranks(counts, targets, [s.astype(np.int64) for s in repeated]).tolist()[0] == 5


def test_floor_on_a_split_matches_a_direct_count(synthetic_prepared: Path) -> None:
    cfg = load_config(None, [f"data.path={synthetic_prepared}", "data.max_len=12", "eval.ks=[5,10]"])
    ds = load_dataset(synthetic_prepared)
    out = popularity_floor(cfg, ds, ("recall@10",))
    split = build_split(cfg, ds)
    counts = split.train_item_counts(ds)
    hits = []
    for u, q in zip(split.test.users, split.test.positions, strict=True):
        t = ds.history(int(u))[int(q)]
        rank = 1 + int((counts[1:] > counts[t]).sum()) + int((counts[1:] == counts[t]).sum()) - 1
        hits.append(rank <= 10)
    assert out["num_test"]["n"] == len(split.test)
    assert abs(out["unmasked"]["recall@10"] - float(np.mean(hits))) < 1e-12
    assert out["masked"]["recall@10"] >= out["unmasked"]["recall@10"]  # dropping seen items only lifts targets
