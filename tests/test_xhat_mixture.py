"""benchmarks/xhat_mixture.py on a tiny trained T2DiffCausal: its single draw is the evaluator's own ranking (paired
against the run's test ranks: a difference of exactly 0), and it reports the spread of the draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark, tiny_config

from t2diff.train import Trainer


def _script():
    return load_benchmark("xhat_mixture")


def test_single_draw_is_the_evaluators_ranking_and_the_spread_is_reported(synthetic_prepared: Path,
                                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(synthetic_prepared, "t2diff_causal", "model.train_draws=2", "model.energy_weight=1.0")
    Trainer(cfg, run, progress=False, log=lambda s: None).fit()
    out = tmp_path / "out"
    assert _script().main([str(run), "--samples", "3", "--against", str(run), "--out", str(out),
                           "--name", "mix", "--batch-size", "5"]) == 0
    got = json.loads((out / "mix.json").read_text())
    for masked in ("masked", "unmasked"):
        single = got["readings"][f"single|{masked}"]["vs_against"]
        assert all(single[m]["diff"] == 0.0 for m in ("ndcg@10", "recall@20")), single
        assert set(got["readings"]) >= {f"{k}|{masked}" for k in ("mean-vector", "mixture", "max")}
    for key in ("mean_cosine_to_draw0", "xhat_mean_cosine_to_draw0"):
        assert -1.0 <= got[key] <= 1.0 + 1e-6
    assert got["xhat_mean_cosine_to_draw0"] < 1.0 - 1e-6  # the draws differ (different keyed noise)
    assert "x_hat to draw 0's" in (out / "mix.md").read_text()


def test_needs_a_generator(synthetic_prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(synthetic_prepared, "t2diff_causal", "model.diffusion=false"), run, progress=False,
            log=lambda s: None).fit()
    with pytest.raises(SystemExit):
        _script().main([str(run), "--out", str(tmp_path / "o")])
