import numpy as np
import pytest
import torch

from t2diff.data.batching import make_batch
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import leave_one_out, make_split, paper_split
from t2diff.data.sessions import session_mask


@pytest.fixture
def ds(synthetic_prepared):
    return PreparedDataset.load(synthetic_prepared)


def _flat_indices(ds, users, positions, max_len):
    """Flat indices into ds.items used as inputs or per-position targets of a batch."""
    out = set()
    for u, j in zip(users, positions, strict=True):
        start = ds.user_ptr[u - 1]
        for k in range(max(0, j - max_len), j + 1):  # inputs j-L..j-1, targets up to j
            out.add(int(start + k))
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_loo_training_never_sees_held_out_positions(ds, causal):
    split = leave_one_out(ds)
    held = {int(ds.user_ptr[u - 1] + j) for ex in (split.valid, split.test)
            for u, j in zip(ex.users, ex.positions, strict=True)}
    ex = split.train_examples(np.random.default_rng(0), causal, 8, 5)
    used = _flat_indices(ds, ex.users, ex.positions, 8)
    assert not used & held
    # and the batches built from them carry no held-out target anywhere
    b = make_batch(ds, ex.users, ex.positions, 8)
    assert (b.target > 0).all()
    assert (ex.positions >= 1).all()
    # the test example is the last behaviour, validation the second last
    assert (split.test.positions == ds.lengths[split.test.users - 1] - 1).all()
    assert (split.valid.positions == split.test.positions - 1).all()


def test_loo_causal_windows_cover_every_trainable_target(ds):
    split = leave_one_out(ds)
    ex = split.train_examples(np.random.default_rng(0), True, 8, 5)
    b = make_batch(ds, ex.users, ex.positions, 8)
    covered = int((b.pos_targets > 0).sum())
    assert covered == int((split.train_limit - 1).sum())


def test_loo_last_window_only_trains_each_users_most_recent_targets(ds):
    split = leave_one_out(ds)
    ex = split.train_examples(np.random.default_rng(0), True, 8, 5, last_window_only=True)
    assert np.array_equal(ex.users, split.train_users)  # one window per user
    assert np.array_equal(ex.positions, split.train_limit - 1)  # ending at the last trainable position
    b = make_batch(ds, ex.users, ex.positions, 8)
    covered = int((b.pos_targets > 0).sum())
    assert covered == int(np.minimum(split.train_limit - 1, 8).sum())  # the most recent max_len targets
    assert covered < int((split.train_limit - 1).sum())  # the fixture has histories longer than 8


def test_loo_every_target_is_each_prefix_once(ds):
    """noncausal_targets=every: every (user, target position) of the trainable history exactly once, in order,
    none held out (DiffuRec's split_onebyone / RecBole's prefix augmentation)."""
    split = leave_one_out(ds)
    ex = split.train_examples(np.random.default_rng(0), False, 8, 5, every_target=True)
    want = [(int(u), j) for u, lim in zip(split.train_users, split.train_limit, strict=True) for j in range(1, lim)]
    assert list(zip(ex.users.tolist(), ex.positions.tolist(), strict=True)) == want
    held = {int(ds.user_ptr[u - 1] + j) for e in (split.valid, split.test)
            for u, j in zip(e.users, e.positions, strict=True)}
    assert not _flat_indices(ds, ex.users, ex.positions, 8) & held
    # the same call without it samples train_targets per user (capped by what a user has)
    sampled = split.train_examples(np.random.default_rng(0), False, 8, 5)
    assert len(sampled) == int(np.minimum(5, split.train_limit - 1).sum()) < len(ex)


def test_loo_noncausal_targets_config_is_checked(synthetic_prepared):
    from conftest import tiny_config

    cfg = tiny_config(synthetic_prepared, "diffurec", "data.loo.noncausal_targets=every")
    assert cfg.data.options.noncausal_targets == "every"
    with pytest.raises((ValueError,), match="noncausal_targets"):
        tiny_config(synthetic_prepared, "diffurec", "data.loo.noncausal_targets=all")


def test_loo_causal_windows_config_is_checked(synthetic_prepared):
    from conftest import tiny_config

    from t2diff.config import ConfigError

    assert tiny_config(synthetic_prepared, "sasrec", "data.loo.causal_windows=last").data.options.causal_windows \
        == "last"
    with pytest.raises((ConfigError, ValueError), match="causal_windows"):
        tiny_config(synthetic_prepared, "sasrec", "data.loo.causal_windows=first")


def test_paper_split_users_disjoint_and_seeded(ds):
    s1 = paper_split(ds, seed=3, history_cap=5, train_targets=4)
    s2 = paper_split(ds, seed=3, history_cap=5, train_targets=4)
    assert np.array_equal(s1.test.users, s2.test.users) and np.array_equal(s1.fixed_train.positions,
                                                                          s2.fixed_train.positions)
    assert not set(s1.test.users) & set(s1.fixed_train.users)
    assert len(set(s1.test.users)) == len(s1.test) == int(ds.num_users * 0.2)
    counts = np.bincount(s1.fixed_train.users)
    assert counts.max() <= 4
    lengths = ds.lengths
    for u, j in zip(s1.fixed_train.users, s1.fixed_train.positions, strict=True):
        assert min(5, lengths[u - 1] - 1) <= j <= lengths[u - 1] - 1
    assert s1.valid is None


def test_unknown_protocol(ds):
    with pytest.raises(ValueError, match="unknown protocol 'nope'"):
        make_split(ds, "nope")


def test_batch_window_left_padded_and_shifted(ds):
    u, j = np.array([1]), np.array([3])
    b = make_batch(ds, u, j, 6)
    h = ds.history(1)
    assert b.seq[0].tolist() == [0, 0, 0, *h[:3].tolist()]
    assert b.pos_targets[0].tolist() == [0, 0, 0, *h[1:4].tolist()]
    assert b.target.item() == h[3]


def test_session_mask_last_k_and_time_gap():
    seq = torch.tensor([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])
    m = session_mask(seq, None, k=3)
    assert m.tolist() == [[False, False, False, True, True, True], [False, False, False, True, True, True]]
    times = torch.tensor([[0, 0, 100, 200, 5000, 5100], [0, 10, 20, 30, 40, 50]])
    m = session_mask(seq, times, k=10, gap_seconds=1000)
    assert m.tolist() == [[False, False, False, False, True, True], [True] * 6]


def test_trainer_trains_every_prefix_of_a_non_causal_model(synthetic_prepared, tmp_path):
    """data.loo.noncausal_targets=every reaches the trainer: one epoch of DiffuRec (non-causal) is the prefix set."""
    from conftest import tiny_config

    from t2diff.train import Trainer

    seen = []
    for mode in ("every", "sampled"):
        tr = Trainer(tiny_config(synthetic_prepared, "diffurec", f"data.loo.noncausal_targets={mode}"),
                     tmp_path / mode, progress=False, log=lambda s: None)
        assert not tr.model.causal
        orig = tr.split.train_examples

        def spy(*a, _orig=orig, **k):
            ex = _orig(*a, **k)
            seen.append(len(ex))
            return ex

        tr.split.train_examples = spy
        tr.fit()
    split = leave_one_out(PreparedDataset.load(synthetic_prepared))
    assert seen == [int((split.train_limit - 1).sum()), int(np.minimum(10, split.train_limit - 1).sum())]
