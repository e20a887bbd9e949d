"""The authors' evaluation, reproduced as labelled options of the paper protocol: their test() loop's double count
(``eval.authors_test_batch``) and histories in file order (``data.paper.history_order``)."""

import json
import shutil

import numpy as np
import pytest

from t2diff.config import ConfigError, load_config
from t2diff.data.errors import DataError
from t2diff.data.movielens import read_ratings
from t2diff.data.prepare import FilterSpec, prepare
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import PaperOptions, authors_test_counts, make_split
from t2diff.evaluate import Ranking
from t2diff.train import (
    AUTHORS_BOTH_LABEL,
    AUTHORS_LOOP_DEFINITION,
    AUTHORS_LOOP_LABEL,
    MAX_LABEL,
    Trainer,
    authors_loop_definition,
    authors_loop_metrics,
)

# ML-1M format; file order differs from time order within users 1 and 2; user 3 (one row) is filtered out
RATINGS = """1::10::5::300
1::20::4::100
2::10::3::50
1::30::3::200
3::40::4::10
2::20::5::40
2::30::2::60
"""


def _prepare_ratings(tmp_path, text=RATINGS, min_user=2):
    path = tmp_path / "ratings.dat"
    path.write_text(text)
    prepare(read_ratings(path), tmp_path / "prepared", FilterSpec(min_user_interactions=min_user), "ml-1m")
    return tmp_path / "prepared"


# ---- eval.authors_test_batch -----------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "batch", "expected"), [
    (5, 2, [2, 2, 1, 1, 1]),  # 2 full batches, both rows 0-1; then rows 2.. once
    (7, 2, [3, 3, 1, 1, 1, 1, 1]),  # 3 full batches of rows 0-1
    (4, 2, [2, 2, 0, 0]),  # no remainder: rows 2-3 never counted
    (2, 2, [1, 1]),  # a single batch: the honest count
    (3, 8, [1, 1, 1]),
])
def test_authors_test_counts_follow_the_loop(rows, batch, expected):
    assert authors_test_counts(rows, batch).tolist() == expected


def test_authors_test_counts_ml1m():
    c = authors_test_counts(1208, 512)
    assert (c[:512] == 2).all() and (c[512:] == 1).all() and c.sum() == 1720
    text = authors_loop_definition(1208, 512)
    assert "rows 1-512 2 times, rows 513-1208 once; denominator 1720" in text and "authors_test_batch=512" in text


def test_authors_loop_metrics_hand_computed():
    ranks = np.array([1, 30, 3, 1, 50])
    r = Ranking(ranks, np.array([True, False, False, False, False]), np.zeros(5, dtype=bool))
    honest = r.metrics([2, 20])
    assert honest["recall@2"] == pytest.approx(2 / 5) and honest["recall@20"] == pytest.approx(3 / 5)
    assert honest["mrr@20"] == pytest.approx((1 + 1 / 3 + 1) / 5)
    # batch 2: rows 0 and 1 enter twice, the denominator is 7
    authors = authors_loop_metrics(r, 2, [2, 20])
    assert authors["recall@2"] == pytest.approx(3 / 7) and authors["recall@20"] == pytest.approx(4 / 7)
    assert authors["mrr@20"] == pytest.approx((2 * 1 + 1 / 3 + 1) / 7)
    assert authors["num_examples"] == 7 and authors["num_tied_targets"] == 2
    assert r.metrics([2, 20]) == honest  # the ranking itself is left as it was


def test_authors_test_batch_rejected_under_loo_and_checked():
    with pytest.raises(ConfigError, match=r"eval\.authors_test_batch.*paper"):
        load_config(None, ["eval.authors_test_batch=512"])
    with pytest.raises(ConfigError, match=r"eval\.authors_test_batch: must be >= 1"):
        load_config(None, ["data.protocol=paper", "eval.authors_test_batch=0"])
    assert load_config(None, ["data.protocol=paper", "eval.authors_test_batch=512"]).eval.authors_test_batch == 512


def _train(prepared, run_dir, *extra):
    from conftest import tiny_config

    cfg = tiny_config(prepared, "sasrec", "data.protocol=paper", "train.epochs=2", "train.report_max_over_epochs=true",
                      *extra)
    trainer = Trainer(cfg, run_dir, progress=False, log=lambda s: None)
    return trainer, trainer.fit()


def test_double_count_reported_beside_unchanged_honest_metrics(synthetic_prepared, tmp_path):
    _, plain = _train(synthetic_prepared, tmp_path / "plain")
    trainer, out = _train(synthetic_prepared, tmp_path / "authors", "eval.authors_test_batch=5")
    n = out["num_test_examples"]
    assert n == 12  # 60 users, 20 % test: rows 0-4 enter twice
    assert out["test"] == plain["test"] and out[MAX_LABEL] == plain[MAX_LABEL]
    assert AUTHORS_LOOP_LABEL not in plain and AUTHORS_LOOP_DEFINITION not in plain
    # the same ranks counted the authors' way (SASRec ranks deterministically: the last epoch's weights again)
    assert out[AUTHORS_LOOP_LABEL] == authors_loop_metrics(trainer.rank_on("test"), 5, trainer.ks)
    assert out[AUTHORS_LOOP_LABEL]["num_examples"] == 17
    assert "rows 1-5 2 times, rows 6-12 once; denominator 17" in out[AUTHORS_LOOP_DEFINITION]
    rows = [json.loads(x) for x in (tmp_path / "authors" / "metrics.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test"] for r in rows] == [r["test"] for r in plain_rows]
    assert all(r[AUTHORS_LOOP_LABEL]["num_examples"] == 17 for r in rows)
    assert out[AUTHORS_BOTH_LABEL] == {k: max(r[AUTHORS_LOOP_LABEL][k] for r in rows)
                                       for k in rows[0][AUTHORS_LOOP_LABEL] if "@" in k}
    saved = json.loads((tmp_path / "authors" / "metrics.json").read_text())
    assert saved[AUTHORS_LOOP_LABEL] == out[AUTHORS_LOOP_LABEL] and saved[AUTHORS_LOOP_DEFINITION]
    assert out["history_order"] == plain["history_order"] == "chronological"


# ---- data.paper.history_order ----------------------------------------------------------------------------

def test_prepare_keeps_the_file_row_of_each_interaction(tmp_path):
    ds = PreparedDataset.load(_prepare_ratings(tmp_path))
    assert ds.user_ids == ["<pad>", "1", "2"] and ds.item_ids == ["<pad>", "10", "20", "30"]
    # chronological cache: user 1 = 20 (t100), 30 (t200), 10 (t300); user 2 = 20 (t40), 10 (t50), 30 (t60)
    assert ds.history(1).tolist() == [2, 3, 1] and ds.history(2).tolist() == [2, 1, 3]
    # the row each came from, counted before the filter dropped user 3's row 4
    assert ds.file_rows.tolist() == [1, 3, 0, 5, 2, 6]


def test_file_order_histories_and_the_same_split_positions(tmp_path):
    ds = PreparedDataset.load(_prepare_ratings(tmp_path))
    chrono = make_split(ds, "paper", PaperOptions(test_frac=0.5), max_len=50)
    assert ds.history_order == "chronological"
    split = make_split(ds, "paper", PaperOptions(test_frac=0.5, history_order="file"), max_len=50)
    assert ds.history_order == "file"
    assert ds.history(1).tolist() == [1, 2, 3] and ds.history(2).tolist() == [1, 2, 3]  # 10, 20, 30 as in the file
    assert ds.times.tolist() == [300, 100, 200, 50, 40, 60]  # each time stays with its interaction
    for a, b in ((chrono.test, split.test), (chrono.fixed_train, split.fixed_train)):
        assert a.users.tolist() == b.users.tolist() and a.positions.tolist() == b.positions.tolist()
    make_split(ds, "loo")  # another protocol on the same dataset gets the chronological histories back
    assert ds.history_order == "chronological" and ds.history(1).tolist() == [2, 3, 1]
    assert ds.times.tolist() == [100, 200, 300, 40, 50, 60]


def test_history_order_config_is_checked():
    cfg = load_config(None, ["data.protocol=paper", "data.paper.history_order=file"])
    assert cfg.data.paper.history_order == "file" and load_config(None).data.paper.history_order == "chronological"
    with pytest.raises(ConfigError, match=r"data\.paper\.history_order: 'time' is not one of chronological, file"):
        load_config(None, ["data.protocol=paper", "data.paper.history_order=time"])


def test_training_in_file_order_is_labelled(tmp_path):
    rng = np.random.default_rng(0)
    lines, by_user = [], {}
    for u in range(1, 41):
        for k in range(int(rng.integers(6, 20))):
            lines.append(f"{u}::{1 + (u + 3 * k) % 25}::4::{1_000_000 + 60 * k}")
    lines = [lines[i] for i in rng.permutation(len(lines))]  # the file order is not the time order
    by_time = {}
    for line in lines:
        u, m, _, t = line.split("::")
        by_user.setdefault(u, []).append(m)
        by_time.setdefault(u, []).append((int(t), m))
    prepared = _prepare_ratings(tmp_path, "\n".join(lines) + "\n", min_user=5)
    trainer, out = _train(prepared, tmp_path / "run", "data.paper.history_order=file", "train.epochs=1")
    assert out["history_order"] == "file" and "file order" in out["history_order_definition"]
    ds = trainer.ds  # the dataset the run batched from
    for u in (1, 2, 3):
        uid = ds.user_ids[u]
        assert [m for _, m in sorted(by_time[uid])] != by_user[uid]  # the two orders differ for this user
        assert [ds.item_ids[i] for i in ds.history(u)] == by_user[uid]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["history_order"] == "file"


def test_file_order_on_a_cache_without_file_rows_is_a_clear_error(tmp_path, capsys):
    from conftest import TINY_SASREC

    from t2diff.cli import main

    old = tmp_path / "old"
    shutil.copytree(_prepare_ratings(tmp_path), old)
    (old / "file_rows.npy").unlink()  # what `t2diff prepare` wrote before the file order was kept
    ds = PreparedDataset.load(old)
    assert ds.file_rows is None
    make_split(ds, "paper", PaperOptions(test_frac=0.5))  # chronological still works
    with pytest.raises(DataError, match=r"data\.paper\.history_order='file'.*re-run `t2diff prepare`"):
        make_split(ds, "paper", PaperOptions(test_frac=0.5, history_order="file"))
    assert ds.history_order == "chronological"
    rc = main(["train", "--run-dir", str(tmp_path / "run"), "--no-progress", *TINY_SASREC, f"data.path={old}",
               "data.protocol=paper", "data.paper.test_frac=0.5", "data.paper.history_order=file"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.paper.history_order='file'" in err and "t2diff prepare" in err
    assert "Traceback" not in err
