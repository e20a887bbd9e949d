"""``t2diff diagnose`` (Figure 4) end to end on a tiny trained T2Diff, and every frozen config under configs/."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from t2diff.cli import main
from t2diff.config import load_config
from t2diff.train import Trainer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("**/*.yaml"))
STEPS = 6
TINY = ["model.name=t2diff", "model.hidden=16", f"model.diffusion.steps={STEPS}", "model.unet.levels=2",
        "model.attention.session_len=4", "model.attention.ffn_dim=32", "model.attention.din_hidden=16",
        "model.attention.user_ffn_hidden=32", "model.item_tower.mlp_hidden=32", "model.attention.time_emb_dim=4",
        "data.max_len=12", "data.protocol=paper", "train.batch_size=64", "train.epochs=1", "train.threads=1",
        "eval.ks=[5,10]"]


def _train(data: Path, run: Path, *extra: str) -> Path:
    Trainer(load_config(None, [f"data.path={data}", *TINY, *extra]), run, progress=False, log=lambda s: None).fit()
    return run


def test_diagnose_writes_one_finite_row_per_step(synthetic_prepared: Path, tmp_path: Path) -> None:
    run = _train(synthetic_prepared, tmp_path / "run")
    out = tmp_path / "fig4"
    assert main(["diagnose", str(run), "--users", "7", "--out", str(out), "--batch-size", "4", "--no-progress"]) == 0
    with (out / "diffusion_cosine_trace.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["t"]) for r in rows] == list(range(STEPS, 0, -1))  # one row per reverse step, T first
    assert all(int(r["n"]) == 7 for r in rows)  # 7 users over two batches, all with a known target
    for r in rows:
        for k, v in r.items():
            assert math.isfinite(float(v)), (k, v)
        assert -1.0 <= float(r["cos_last_mean"]) <= 1.0
    assert (out / "diffusion_cosine_trace.png").stat().st_size > 0
    meta = json.loads((out / "diagnose.json").read_text())
    assert meta["examples"] == 7 and meta["steps"] == STEPS and meta["split"] == "test"

    # seeded: the same subset and the same chain noise give the same trace
    again = tmp_path / "again"
    assert main(["diagnose", str(run), "--users", "7", "--out", str(again), "--batch-size", "4",
                 "--no-progress"]) == 0
    assert (again / "diffusion_cosine_trace.csv").read_text() == (out / "diffusion_cosine_trace.csv").read_text()


def test_xhat_sources_chain_reproduces_evaluation(synthetic_prepared: Path, tmp_path: Path) -> None:
    """The 'chain' source must give exactly the evaluator's metrics; an oracle x_hat changes the ranking only
    through x_hat (same weights), and the CLI writes the table."""
    from t2diff.diagnostics import xhat_source_metrics
    from t2diff.evaluate import evaluate
    from t2diff.run import build_from_checkpoint, build_split

    run = _train(synthetic_prepared, tmp_path / "run")
    model, cfg, ds = build_from_checkpoint(run)
    ex = build_split(cfg, ds).test
    ref = evaluate(model, ds, ex, cfg.data.max_len, [5, 10], batch_size=5)
    res = xhat_source_metrics(model, ds, ex, cfg.data.max_len, [5, 10], ["chain", "none", "last-item", "onestep@1"],
                              batch_size=3)
    assert res["chain"] == ref  # batch-size independent too (keyed chain noise)
    for m in res.values():
        assert m["num_examples"] == len(ex) and all(0.0 <= v <= 1.0 for k, v in m.items() if k != "num_examples")
    out = tmp_path / "x"
    assert main(["diagnose", str(run), "--users", "3", "--out", str(out), "--no-progress",
                 "--xhat-sources", "chain", "onestep@2"]) == 0
    rows = list(csv.DictReader((out / "xhat_sources.csv").open()))
    assert [r["source"] for r in rows] == ["chain", "onestep@2"]
    assert float(rows[0]["recall@10"]) == pytest.approx(ref["recall@10"], abs=1e-6)
    assert "| chain |" in (out / "xhat_sources.md").read_text()


@pytest.mark.parametrize("bad", ["onestep@0", f"onestep@{STEPS + 1}", "onestep", "noise"])
def test_xhat_sources_rejects_unknown_source(synthetic_prepared: Path, tmp_path: Path, bad: str, capsys) -> None:
    run = _train(synthetic_prepared, tmp_path / "run")
    assert main(["diagnose", str(run), "--out", str(tmp_path / "o"), "--no-progress", "--xhat-sources", bad]) == 2
    assert bad in capsys.readouterr().err


def test_diagnose_rejects_runs_without_diffusion(synthetic_prepared: Path, tmp_path: Path, capsys) -> None:
    run = _train(synthetic_prepared, tmp_path / "mixed", "model.diffusion=false")  # the legacy flat switch
    assert main(["diagnose", str(run), "--users", "4", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "diffusion" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_every_config_loads(path: Path) -> None:
    """Frozen configs must load (unknown keys and wrong types are errors) and carry their header comment (with
    the command, except ``_*.yaml``: shared ``base:`` parts, not run configs)."""
    cfg = load_config(path)
    assert cfg.model["name"]
    header = path.read_text().splitlines()[:4]
    assert header[0].startswith("#"), path
    assert path.name.startswith("_") or any("Command:" in line for line in header), path


def test_configs_found() -> None:
    assert any(p.name == "t2diff.yaml" for p in CONFIGS) and len(CONFIGS) >= 7


CAUSAL = ["model.name=t2diff_causal", "model.hidden=16", "model.num_blocks=1", "model.num_heads=2",
          "model.ffn_dim=32", "model.session_len=4", f"model.steps={STEPS}", "model.denoiser_hidden=32",
          "data.max_len=12", "train.batch_size=32", "train.epochs=1", "train.threads=1", "eval.ks=[5,10]"]


def _train_causal(data: Path, run: Path) -> Path:
    Trainer(load_config(None, [f"data.path={data}", *CAUSAL]), run, progress=False, log=lambda s: None).fit()
    return run


def test_diagnose_and_xhat_sources_work_for_the_causal_variant(synthetic_prepared: Path, tmp_path: Path) -> None:
    from t2diff.diagnostics import xhat_source_metrics
    from t2diff.evaluate import evaluate
    from t2diff.run import build_from_checkpoint, build_split

    run = _train_causal(synthetic_prepared, tmp_path / "run")
    out = tmp_path / "fig4"
    # the default chain (ddim, 2 steps) and a 5-step one chosen at inference
    assert main(["diagnose", str(run), "--users", "7", "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "diffusion_cosine_trace.csv").open()))
    assert [int(r["t"]) for r in rows] == [STEPS, 1] and all(int(r["n"]) == 7 for r in rows)
    assert main(["diagnose", str(run), "--users", "7", "--out", str(out), "--no-progress", "--steps", "5"]) == 0
    rows = list(csv.DictReader((out / "diffusion_cosine_trace.csv").open()))
    assert len(rows) == 5 and all(math.isfinite(float(v)) for r in rows for v in r.values())
    assert json.loads((out / "diagnose.json").read_text())["visited_steps"] == 5

    model, cfg, ds = build_from_checkpoint(run)
    ex = build_split(cfg, ds).test
    ref = evaluate(model, ds, ex, cfg.data.max_len, [5, 10], batch_size=5)
    res = xhat_source_metrics(model, ds, ex, cfg.data.max_len, [5, 10], ["chain", "none", "last-item", "onestep@1"],
                              batch_size=3)
    assert res["chain"] == ref  # the chain source is what evaluation computes, at any batch size
    assert res["none"] != ref  # the crossing reads x_hat


def test_evaluate_takes_the_sampler_at_inference(synthetic_prepared: Path, tmp_path: Path, capsys) -> None:
    run = _train_causal(synthetic_prepared, tmp_path / "run")
    assert main(["evaluate", str(run), "--no-progress", "--sampler", "ddim", "--steps", "5"]) == 0
    data = json.loads((run / "metrics.json").read_text())
    assert data["evaluate_ddim5"]["sampler"] == {"name": "ddim", "steps": 5}
    assert main(["evaluate", str(run), "--no-progress", "--sampler", "ddpm", "--steps", "3"]) == 2
    assert "inference_steps" in capsys.readouterr().err
    sas = tmp_path / "sas"
    Trainer(load_config(None, [f"data.path={synthetic_prepared}", "data.max_len=12", "model.hidden=16",
                               "model.num_blocks=1", "train.epochs=1", "train.threads=1"]), sas, progress=False,
            log=lambda s: None).fit()
    assert main(["evaluate", str(sas), "--no-progress", "--steps", "2"]) == 2
    assert "diffusion model" in capsys.readouterr().err
