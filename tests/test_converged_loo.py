import json

from conftest import load_benchmark, tiny_config

from t2diff.train import Trainer


def test_a_labelled_variant_gets_its_own_row_beside_the_model(synthetic_prepared, tmp_path):
    bench = load_benchmark("converged_loo")
    run = tmp_path / "run"
    Trainer(tiny_config(synthetic_prepared, "sasrec", "train.epochs=1", "train.select_metric=ndcg@10"), run,
            progress=False, log=lambda s: None).fit()
    out = tmp_path / "results"
    assert bench.main([str(run), "--out", str(out)]) == 0
    assert bench.main([str(run), "--out", str(out), "--label", "small init"]) == 0
    rows = json.loads((out / "converged_loo.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["sasrec", "sasrec (small init)"]  # the variant did not replace the row
    assert rows[0]["test_masked"] == rows[1]["test_masked"]  # the same run, measured twice
    assert rows[1]["published"] == rows[0]["published"] != "-"  # looked up by the base model
    assert bench.main([str(run), "--out", str(out)]) == 0  # re-measuring the model keeps its labelled row
    assert [r["model"] for r in json.loads((out / "converged_loo.json").read_text())["rows"]] == [
        "sasrec", "sasrec (small init)"]
    assert "sasrec (small init)" in (out / "converged_loo.md").read_text()
