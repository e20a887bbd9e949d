import numpy as np
import pytest
import torch

from t2diff.metrics import metrics_from_ranks, ranks_from_scores


def test_ranks_hand_computed_with_ties():
    neg = -torch.inf
    scores = torch.tensor([
        [neg, 0.9, 0.5, 0.5, 0.1],  # target 3 ties with item 2: rank = 1 + #strictly higher = 2
        [neg, 0.2, 0.2, 0.2, 0.2],  # all tied: rank 1 (ties never count as higher)
        [neg, 0.1, 0.3, 0.2, 0.9],  # target 1 is the lowest: rank 4
        [neg, 0.9, 0.8, 0.7, 0.6],  # target 1 is the best: rank 1
    ])
    targets = torch.tensor([3, 4, 1, 1])
    assert ranks_from_scores(scores, targets).tolist() == [2, 1, 4, 1]


def test_padding_never_outranks():
    scores = torch.tensor([[-torch.inf, 0.0, -5.0]])
    assert ranks_from_scores(scores, torch.tensor([2])).item() == 2


def test_metrics_from_ranks_hand_values():
    ranks = np.array([1, 2, 3, 11])
    m = metrics_from_ranks(ranks, [2, 10])
    assert m["recall@2"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["mrr@2"] == pytest.approx((1 + 1 / 2) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(4)) / 4)
