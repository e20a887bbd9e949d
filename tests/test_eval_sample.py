"""eval.max_users: a reduced pass validates and tests on a seeded sample of users, labelled in metrics.json."""

import numpy as np
import pytest
from conftest import tiny_config

from t2diff.config import ConfigError
from t2diff.data.errors import DataError
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Examples, Split, make_split, sample_eval_users
from t2diff.train import EVAL_SAMPLE_DEFINITION, Trainer


def _split() -> Split:
    u = np.arange(1, 11, dtype=np.int64)
    return Split("loo", valid=Examples(u, u + 1), test=Examples(u, u + 2), train_users=u, train_limit=u + 1)


def test_sample_keeps_the_same_users_in_valid_and_test_and_leaves_training():
    s = sample_eval_users(_split(), 4, seed=3)
    assert len(s.test) == len(s.valid) == 4
    assert np.array_equal(s.test.users, s.valid.users) and np.all(np.diff(s.test.users) > 0)  # split order
    assert np.array_equal(s.test.positions, s.test.users + 2)  # each user's own target kept
    assert np.array_equal(s.train_users, np.arange(1, 11)) and s.eval_users_of == 10
    again = sample_eval_users(_split(), 4, seed=3)
    other = sample_eval_users(_split(), 4, seed=4)
    assert np.array_equal(again.test.users, s.test.users)
    assert not np.array_equal(other.test.users, s.test.users)


def test_sample_no_larger_than_the_set_is_the_set():
    s = _split()
    assert sample_eval_users(s, 10) is s and sample_eval_users(s, 50) is s
    with pytest.raises(DataError, match="max_users"):
        sample_eval_users(s, 0)


def test_config_rejects_a_bad_max_users(synthetic_prepared):
    with pytest.raises(ConfigError, match="max_users"):
        tiny_config(synthetic_prepared, "sasrec", "eval.max_users=0")


@pytest.mark.parametrize("protocol", ["loo", "paper"])
def test_trainer_evaluates_the_sample_and_labels_it(synthetic_prepared, tmp_path, protocol):
    cfg = tiny_config(synthetic_prepared, "sasrec", f"data.protocol={protocol}", "train.epochs=1",
                      "eval.max_users=7", "eval.user_sample_seed=1")
    out = Trainer(cfg, tmp_path / "r", progress=False, log=lambda s: None).fit()
    full = make_split(PreparedDataset.load(synthetic_prepared), protocol, cfg.data.options, cfg.data.max_len)
    assert out["num_test_examples"] == 7
    assert out["eval_users"] == {"sampled": 7, "of": len(np.unique(full.test.users)), "seed": 1,
                                 "definition": EVAL_SAMPLE_DEFINITION}
    plain = tiny_config(synthetic_prepared, "sasrec", f"data.protocol={protocol}", "train.epochs=1")
    assert "eval_users" not in Trainer(plain, tmp_path / "p", progress=False, log=lambda s: None).fit()
