import warnings

import numpy as np
import pytest
import torch

from t2diff.metrics import metrics_from_ranks, ranks_from_scores

NEG, NAN, INF = -torch.inf, torch.nan, torch.inf


def test_ranks_hand_computed_with_pessimistic_ties():
    scores = torch.tensor([
        [NEG, 0.9, 0.5, 0.5, 0.1],  # target 3 ties with item 2: 1 + 1 higher + 1 tied = 3
        [NEG, 0.2, 0.2, 0.2, 0.2],  # all tied: 1 + 0 + 3 = 4, the worst rank
        [NEG, 0.1, 0.3, 0.2, 0.9],  # target 1 is the lowest: rank 4
        [NEG, 0.9, 0.8, 0.7, 0.6],  # target 1 is the best: rank 1
        [NEG, 0.3, 0.3, 0.3, 0.1],  # target 2 tied with items 1 and 3: 1 + 0 + 2 = 3
    ])
    ranks, tied = ranks_from_scores(scores, torch.tensor([3, 4, 1, 1, 2]))
    assert ranks.tolist() == [3, 4, 4, 1, 3]
    assert tied.tolist() == [True, True, False, False, True]


def test_padding_column_never_counts_even_when_tied():
    # column 0 is padding: never ranked, even when its score equals the target's
    ranks, tied = ranks_from_scores(torch.tensor([[0.5, 0.5, -5.0]]), torch.tensor([1]))
    assert ranks.tolist() == [1] and tied.tolist() == [False]


def test_nan_and_infinite_scores_never_flatter():
    scores = torch.tensor([
        [NEG, NAN, 0.5, 0.1, 0.2],  # target 3: 0.5 higher, NaN item counted as a tie against the model -> 3
        [NEG, 0.9, NAN, 0.1, 0.2],  # NaN target -> worst rank 4
        [NEG, 0.9, INF, 0.1, 0.2],  # +inf target -> worst rank 4 (a broken model, not a perfect one)
        [NEG, 0.9, NEG, NEG, 0.2],  # -inf target (e.g. masked) tied with another -inf -> worst rank 4
    ])
    ranks, tied = ranks_from_scores(scores, torch.tensor([4, 2, 2, 2]))
    assert ranks.tolist() == [3, 4, 4, 4]
    assert tied.tolist() == [True, False, False, False]


def test_metrics_from_ranks_hand_values():
    ranks = np.array([1, 2, 3, 11])
    m = metrics_from_ranks(ranks, [2, 10])
    assert m["recall@2"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["mrr@2"] == pytest.approx((1 + 1 / 2) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(4)) / 4)


class _Scorer(torch.nn.Module):
    """A degenerate model behind the evaluator: constant (collapsed) or NaN user vectors."""

    def __init__(self, num_items: int, value: float) -> None:
        super().__init__()
        self.items = torch.randn(num_items + 1, 8, generator=torch.Generator().manual_seed(0))
        self.value = value

    def user_embeddings(self, batch):
        return torch.full((len(batch), 8), self.value)

    def item_embeddings(self):
        return self.items


@pytest.mark.parametrize("value", [0.0, float("nan")])
def test_collapsed_and_nan_scorers_get_zero_metrics(synthetic_prepared, value):
    from t2diff.data.prepared import PreparedDataset
    from t2diff.data.protocols import leave_one_out
    from t2diff.evaluate import rank_examples

    ds = PreparedDataset.load(synthetic_prepared)
    ex = leave_one_out(ds).test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = rank_examples(_Scorer(ds.num_items, value), ds, ex, max_len=12)
    m = res.metrics([1, 10])
    assert (res.ranks == ds.num_items).all()  # the old rule (1 + #strictly higher) gave rank 1 to every target
    assert m["recall@10"] == 0.0 and m["ndcg@10"] == 0.0 and m["mrr@1"] == 0.0
    if np.isnan(value):
        assert m["num_nonfinite_targets"] == len(ex) and m["num_tied_targets"] == 0
        assert any("NaN or infinite" in str(w.message) for w in caught)
    else:
        assert m["num_tied_targets"] == len(ex) and m["num_nonfinite_targets"] == 0
        assert not caught
