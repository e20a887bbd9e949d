"""Config loading: types, allowed values and cross-field rules checked at load (naming the dotted key), and
``base:`` inheritance of YAML files. No data, no model training."""

from __future__ import annotations

import pytest

from t2diff.config import ConfigError, load_config


@pytest.mark.parametrize(("override", "needle"), [
    ("data.protocol=kfold", "data.protocol: 'kfold' is not one of loo, paper"),
    ("train.loss=hinge", "train.loss: 'hinge' is not one of full, sampled"),
    ("train.negative_sampler=hard", "train.negative_sampler: 'hard' is not one of uniform, popularity"),
    ("train.select_metric=ndcg", "train.select_metric: 'ndcg' is not a metric such as ndcg@10"),
    ("train.select_metric=auc@10", "train.select_metric: 'auc@10' is not a metric"),
    ("train.select_metric=ndcg@0", "K >= 1"),
    ("train.lr=0", "train.lr: must be > 0"),
    ("train.batch_size=0", "train.batch_size: must be >= 1"),
    ("train.threads=0", "train.threads: must be >= 1"),
    ("data.max_len=0", "data.max_len: must be >= 1"),
    ("data.paper.test_frac=1.5", "data.paper.test_frac: must be in (0, 1)"),
    ("data.test_frac=1.5", "data.paper.test_frac: must be in (0, 1)"),  # the legacy flat key
    ("data.loo.train_targets=0", "data.loo.train_targets: must be >= 1"),
    ("data.paper.seed=1", "data.paper: unknown key(s) ['seed']"),
    ("eval.ks=[]", "eval.ks: needs cut-offs >= 1"),
    ("eval.ks=[10,0]", "eval.ks: needs cut-offs >= 1"),
    ("train.epochs=ten", "train.epochs: expected int, got 'ten'"),
    ("train.lrr=0.1", "train: unknown key(s) ['lrr']"),
    ("model.name=sasrek", "unknown model 'sasrek'"),
    ("model.hiden=8", "model: unknown key(s) ['hiden']"),
])
def test_bad_values_are_rejected_at_load(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_good_values_load():
    cfg = load_config(None, ["train.loss=sampled", "train.negative_sampler=in_batch", "train.num_negatives=0",
                             "train.select_metric=recall@20", "data.protocol=paper", "train.lr=1e-3"])
    assert cfg.train.loss == "sampled" and cfg.train.select_metric == "recall@20" and cfg.train.lr == 1e-3


def test_base_inheritance(tmp_path):
    (tmp_path / "a.yaml").write_text("data: {max_len: 20, protocol: paper}\nmodel: {name: sasrec, hidden: 32}\n"
                                     "train: {epochs: 3, lr: 0.01}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {hidden: 16}\ntrain: {epochs: 5}\n")
    (tmp_path / "c.yaml").write_text("base: [a.yaml, b.yaml]\neval: {ks: [1, 2]}\n")
    b = load_config(tmp_path / "b.yaml", ["train.lr=0.5"])
    assert (b.data.max_len, b.data.protocol, b.model["hidden"], b.train.epochs, b.train.lr) == (20, "paper", 16, 5, 0.5)
    c = load_config(tmp_path / "c.yaml")
    assert c.model["hidden"] == 16 and c.eval.ks == [1, 2]
    (tmp_path / "loop1.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop1.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(tmp_path / "loop1.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        load_config(tmp_path / "d.yaml")


def test_protocol_options_and_their_legacy_flat_keys():
    new = load_config(None, ["data.protocol=paper", "data.paper.split_seed=7", "data.paper.train_targets=3",
                             "data.loo.train_targets=4"])
    assert new.data.options is new.data.paper and new.data.options.split_seed == 7
    old = load_config(None, ["data.protocol=paper", "data.split_seed=7", "data.train_targets=3"])
    assert old.data.paper.split_seed == 7 and old.data.paper.train_targets == 3 and old.data.loo.train_targets == 3
    assert load_config(None, []).data.options is not None


def test_later_sources_win_whatever_layout_each_uses(tmp_path):
    """Each file and override is brought to the current layout before merging: a flat override beats a nested
    file, a nested override beats a flat (old) file, and a derived file beats its base either way."""
    (tmp_path / "nested.yaml").write_text("data: {protocol: paper, paper: {train_targets: 10}}\n"
                                          "model: {name: t2diff, diffusion: {steps: 50}}\n")
    (tmp_path / "flat.yaml").write_text("data: {protocol: paper, train_targets: 10}\n"
                                        "model: {name: t2diff, steps: 50}\n")
    (tmp_path / "derived.yaml").write_text("base: flat.yaml\ndata: {paper: {train_targets: 4}}\n"
                                           "model: {diffusion: {steps: 7}}\n")
    a = load_config(tmp_path / "nested.yaml", ["data.train_targets=5", "model.steps=10"])
    assert a.data.paper.train_targets == 5 and a.data.loo.train_targets == 5
    b = load_config(tmp_path / "flat.yaml", ["data.paper.train_targets=5", "model.diffusion.steps=10"])
    c = load_config(tmp_path / "derived.yaml")
    from t2diff.config import model_config

    assert model_config(a).diffusion.steps == 10 and model_config(b).diffusion.steps == 10
    assert b.data.paper.train_targets == 5 and c.data.paper.train_targets == 4
    assert model_config(c).diffusion.steps == 7
    with pytest.raises(ConfigError, match="'data.protocol' is not a section"):
        load_config(tmp_path / "flat.yaml", ["data.protocol.x=1"])
    with pytest.raises(ConfigError, match="data.protocol: expected str"):
        load_config(None, ["data.protocol.x=1"])
