import json

import numpy as np
import pytest

from t2diff.data.generic import ColumnSpec, read_interactions
from t2diff.data.prepare import FilterSpec, prepare
from t2diff.data.prepared import PreparedDataset
from t2diff.data.sources import SourceSpec, load_source


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_prepare_is_byte_deterministic(tmp_path):
    from conftest import write_synthetic_log

    log = write_synthetic_log(tmp_path / "log.csv")
    outs = []
    for k in range(2):
        inter = read_interactions(log, ColumnSpec(user="user", item="item", time="ts"))
        out = tmp_path / f"p{k}"
        prepare(inter, out, FilterSpec(), "generic")
        outs.append(_files(out))
    assert outs[0] == outs[1]


def test_prepare_orders_by_time_then_order_then_file_row(tmp_path):
    p = tmp_path / "log.csv"
    # user b's rows are out of time order in the file; ties in time broken by the order column
    p.write_text("u,i,t,o\nb,x,30,0\nb,y,10,1\nb,z,10,0\na,x,5,0\n")
    inter = read_interactions(p, ColumnSpec(user="u", item="i", time="t", order="o"))
    prepare(inter, tmp_path / "out", FilterSpec(min_user_interactions=1), "generic")
    ds = PreparedDataset.load(tmp_path / "out")
    assert ds.user_ids == ["<pad>", "a", "b"] and ds.item_ids == ["<pad>", "x", "y", "z"]
    assert ds.history(2).tolist() == [3, 2, 1]  # z (t=10,o=0), y (t=10,o=1), x (t=30)
    assert ds.times.tolist() == [5, 10, 10, 30]


def test_min_interactions_filter(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id\n" + "".join(f"a,{k}\n" for k in range(5)) + "b,1\nb,2\n")
    meta = prepare(read_interactions(p, ColumnSpec()), tmp_path / "o", FilterSpec(), "generic")
    assert meta["num_users"] == 1 and meta["num_interactions"] == 5
    assert meta["filters"]["min_user_interactions"] == 5


def test_prepare_ml1m_counts(ml1m_dir, tmp_path):
    meta = prepare(load_source(SourceSpec(dataset="ml-1m", data_dir=str(ml1m_dir.parent))), tmp_path / "a",
                   FilterSpec(), "ml-1m")
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (6040, 3706, 1_000_209)
    assert meta["sources"][0]["file"] == "sequences.tsv" and len(meta["sources"][0]["sha256"]) == 64
    ds = PreparedDataset.load(tmp_path / "a")
    # sequences.tsv seq_index order is kept: user 1's first item is movie 3186
    assert ds.item_ids[ds.history(1)[0]] == "3186"
    assert ds.item_features is not None and ds.item_features.shape == (3707, 6)


def test_prepare_ml1m_ratings_with_time(ml1m_dir, tmp_path):
    spec = SourceSpec(dataset="ml-1m", data_dir=str(ml1m_dir.parent), inputs=["ratings.users-1-2999.dat"])
    meta = prepare(load_source(spec), tmp_path / "b", FilterSpec(), "ml-1m")
    assert (meta["num_users"], meta["num_interactions"], meta["has_time"]) == (2999, 487_650, True)
    ds = PreparedDataset.load(tmp_path / "b")
    for u in (1, 500, 2999):
        t = ds.times[ds.user_ptr[u - 1]: ds.user_ptr[u]]
        assert (np.diff(t) >= 0).all()


def test_prepare_kuairand_counts(kuairand_dir, tmp_path):
    spec = SourceSpec(dataset="kuairand", data_dir=str(kuairand_dir.parents[2]))
    meta = prepare(load_source(spec), tmp_path / "k", FilterSpec(), "kuairand")
    # SOURCES.md: the subset under tab==1, is_click==1, >= 5 clicks per user
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (6441, 3991, 56_340)
    assert meta["item_features"]["items_with_features"] == 3991
    saved = json.loads((tmp_path / "k" / "meta.json").read_text())
    assert saved == meta


def test_cli_prepare_error_is_clean(tmp_path, capsys):
    from t2diff.cli import main

    rc = main(["prepare", "generic", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "nope.csv: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["data.nope=1", "train.lr=abc", "model.name=nope", "model.hidden_size=3"])
def test_config_rejects_unknown_and_bad(bad):
    from t2diff.config import ConfigError, load_config

    with pytest.raises(ConfigError):
        load_config(None, [bad])
