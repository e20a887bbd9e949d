"""benchmarks/paper_scale_lr.py: the lr of each row is the one with the lowest last-epoch training loss, and a run
that did not finish or ended on a non-finite loss is never chosen."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_benchmark


def _script():
    return load_benchmark("paper_scale_lr")


def _run(root: Path, name: str, losses: list[float], finished: bool = True) -> str:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "train_loss": v}) + "\n"
                                             for i, v in enumerate(losses)))
    if finished:
        (d / "metrics.json").write_text("{}")
    return str(d)


def test_lowest_last_loss_is_chosen_and_broken_runs_never(tmp_path: Path) -> None:
    mod = _script()
    passes = {
        "0.001": {"A": {"run_dir": _run(tmp_path, "a1", [9.0, 7.0])}, "B": {"run_dir": _run(tmp_path, "b1", [8.0])},
                  "C": {"run_dir": _run(tmp_path, "c1", [5.0], finished=False)}},
        "0.01": {"A": {"run_dir": _run(tmp_path, "a2", [6.0, 6.5])},  # the last epoch counts, not the best one
                 "B": {"run_dir": _run(tmp_path, "b2", [7.0, float("nan")])},
                 "C": {"run_dir": _run(tmp_path, "c2", [4.0], finished=False)}},
    }
    got = mod.choose(passes)
    assert got["A"][0] == "0.01" and got["A"][1] == {"0.001": 7.0, "0.01": 6.5}
    assert got["B"][0] == "0.001"  # the NaN-ended run is not chosen
    assert got["C"][0] is None  # neither run finished


def test_a_prior_output_stands_in_for_a_pass_whose_runs_are_gone(tmp_path: Path) -> None:
    mod = _script()
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"metric": "recall@20", "rows": {
        "A": {"last_loss": {"0.001": 7.0, "0.01": 6.0}, "test": {"0.001": 0.05, "0.01": 0.13}},
        "B": {"last_loss": {"0.001": 7.5, "0.01": 8.2}, "test": {"0.001": 0.07, "0.01": 0.0}}}}))
    passes = {lr: mod.prior_rows(earlier, lr, "recall@20") for lr in ("0.001", "0.01")}
    passes["0.03"] = {"A": {"run_dir": _run(tmp_path, "a3", [6.2])}, "B": {"run_dir": _run(tmp_path, "b3", [7.4])}}
    got = mod.choose(passes)
    assert got["A"][0] == "0.01" and got["A"][1] == {"0.001": 7.0, "0.01": 6.0, "0.03": 6.2}
    assert got["B"][0] == "0.03"
    assert passes["0.01"]["A"]["run_dir"] is None and passes["0.01"]["A"]["test"] == {"recall@20": 0.13}
    try:
        mod.prior_rows(earlier, "0.3", "recall@20")
    except SystemExit as e:
        assert "no lr 0.3" in str(e)
    else:
        raise AssertionError("an lr the earlier output lacks must be refused")
