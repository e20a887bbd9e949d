"""Self-contained checkpoints: the model rebuilds from the checkpoint alone; a deleted prepared cache is rebuilt
from the recipe `t2diff prepare` recorded (and must come out the same); old checkpoints load or say how to
convert them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_SASREC, write_synthetic_log

from t2diff import checkpoint
from t2diff.cli import main
from t2diff.run import LEGACY, load_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("selfcontained")
    log = write_synthetic_log(d / "log.csv")
    assert main(["prepare", "generic", "--input", str(log), "--user-col", "user", "--item-col", "item",
                 "--time-col", "ts", "--out", str(d / "prepared")]) == 0
    assert main(["train", "--run-dir", str(d / "run"), "--no-progress", f"data.path={d / 'prepared'}",
                 *TINY_SASREC]) == 0
    return d


def test_model_rebuilds_without_the_dataset(trained, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(trained, d)
    cfg_path = d / "prepared"
    ck = torch.load(d / "run" / "best.pt", weights_only=True)
    assert ck["data"]["item_ids"][0] == "<pad>" and ck["data"]["meta"]["recipe"]["source"]["dataset"] == "generic"
    shutil.rmtree(cfg_path)
    # the checkpoint records the original cache path: point it at the deleted copy
    r = load_run(d / "run", data_path=str(cfg_path))
    assert not cfg_path.exists()  # nothing needed the data yet
    assert r.info.num_items == len(r.item_ids) - 1 and r.model.item_embeddings().shape[0] == r.info.num_items + 1


def test_evaluate_and_export_with_the_cache_deleted(trained, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(trained, d)
    data = ["--data", str(d / "prepared")]
    assert main(["evaluate", str(d / "run"), "--no-progress", *data]) == 0
    before = json.loads((d / "run" / "metrics.json").read_text())["evaluate"]["metrics"]
    meta = json.loads((d / "prepared" / "meta.json").read_text())
    shutil.rmtree(d / "prepared")
    assert main(["evaluate", str(d / "run"), "--no-progress", *data]) == 0  # rebuilt from the recipe
    assert "rebuilding it from its recorded recipe" in capsys.readouterr().err
    assert json.loads((d / "run" / "metrics.json").read_text())["evaluate"]["metrics"] == before
    assert json.loads((d / "prepared" / "meta.json").read_text()) == meta
    shutil.rmtree(d / "prepared")
    assert main(["export", str(d / "run"), "--out", str(tmp_path / "export"), *data]) == 0
    assert (tmp_path / "export" / "items.npy").exists()


def test_a_changed_source_is_refused(trained, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(trained, d)
    meta = json.loads((d / "prepared" / "meta.json").read_text())
    src = Path(meta["recipe"]["source"]["inputs"][0])
    shutil.rmtree(d / "prepared")
    original = src.read_text()
    try:
        src.write_text(original + "u0,i1,1700000000\n")  # the raw file changed since prepare
        assert main(["evaluate", str(d / "run"), "--data", str(d / "prepared"), "--no-progress"]) == 2
        assert "differs from the recorded dataset" in capsys.readouterr().err
    finally:
        src.write_text(original)


def test_legacy_checkpoint_loads_or_says_how_to_convert(trained, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(trained, d)
    for name in ("best.pt", "last.pt"):  # as written before checkpoints carried their data
        ck = torch.load(d / "run" / name, weights_only=True)
        del ck["data"]
        checkpoint.save_atomic(ck, d / "run" / name)
    ok = load_run(d / "run", data_path=str(d / "prepared"))  # with its dataset present it loads
    assert ok.info.num_items == 40
    with pytest.raises(checkpoint.CheckpointError) as e:
        load_run(d / "run", data_path=str(tmp_path / "nowhere"))
    assert "upgrade-checkpoint" in str(e.value) and str(e.value) == LEGACY.format(
        path=d / "run" / "best.pt", data=tmp_path / "nowhere")
    assert main(["upgrade-checkpoint", str(d / "run"), "--data", str(d / "prepared")]) == 0
    shutil.rmtree(d / "prepared")
    assert load_run(d / "run", data_path=str(d / "prepared")).info.num_items == 40


def test_export_and_retrieval_from_the_checkpoint_alone(trained, tmp_path, capsys):
    """With the cache deleted and the raw log gone too (nothing to rebuild from), a flat export and retrieval
    over histories still work: they need only the checkpoint; what needs stored histories says so."""
    from t2diff.retrieval.export import open_retriever

    d = tmp_path / "copy"
    shutil.copytree(trained, d)
    shutil.rmtree(d / "prepared")
    data = ["--data", str(d / "prepared")]
    log = Path(json.loads((trained / "prepared" / "meta.json").read_text())["recipe"]["source"]["inputs"][0])
    hidden = log.with_suffix(".hidden")
    log.rename(hidden)
    try:
        assert main(["export", str(d / "run"), "--out", str(tmp_path / "flat"), *data]) == 0
        assert not (d / "prepared").exists()
        r = open_retriever(tmp_path / "flat", data_path=str(d / "prepared"))
        ids, _ = r.tower.to_internal(["i1", "i2", "i3"])
        scores, top = r.topk([ids], 5)
        assert (top[0] > 0).all() and scores[0][0] >= scores[0][-1]
        # an ANN export's recall report needs real test users: a clear error, nothing half-written
        assert main(["export", str(d / "run"), "--out", str(tmp_path / "hnsw"), "--index", "hnsw", *data]) == 2
        err = capsys.readouterr().err
        assert "rebuilding it from its recipe failed" in err and "file not found" in err
        assert not (tmp_path / "hnsw" / "export.json").exists()
    finally:
        hidden.rename(log)
