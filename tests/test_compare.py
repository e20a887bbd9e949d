"""``t2diff compare`` on the synthetic fixture: the table's files, rows, columns and parameter counts, the
paper's rows, forced shared settings, and a disagreeing data.path as an error."""

import csv
import re
import time
from pathlib import Path

import pytest
import yaml

from t2diff.cli import main
from t2diff.compare import CompareOptions, ModelResult, Report, paper_table2, resolve_entries
from t2diff.config import ConfigError, experiment_from_dict
from t2diff.models.base import count_parameters
from t2diff.run import build_from_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ml-1m"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compare"  # written by compare.py before its split
TINY = ["train.epochs=1", "data.max_len=12", "train.batch_size=32", "eval.ks=[2,20]", "train.threads=1"]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "compare.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_compare_paper_protocol_with_paper_rows(synthetic_prepared, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--models", "sasrec", "caser", "dat", "--config-dir", str(CONFIGS), "--protocol", "paper",
            "--out", str(out), "--paper", "--paper-dataset", "ml-1m", "--max-over-epochs", "--no-progress",
            f"data.path={synthetic_prepared}", *TINY]
    assert main(argv) == 0
    assert (out / "compare.md").exists() and (out / "compare.csv").exists()
    rows = _rows(out)
    ours = [r for r in rows if r["source"] == "ours"]
    paper = [r for r in rows if r["source"] == "paper Table 2"]
    assert [r["model"] for r in ours] == ["sasrec", "caser", "dat"]
    assert [r["model"] for r in paper] == ["SASRec", "Caser", "DAT+"]  # each right after ours
    assert [r["model"] for r in rows] == ["sasrec", "SASRec", "caser", "Caser", "dat", "DAT+"]
    for c in ("recall@2", "recall@20", "mrr@2", "mrr@20", "ndcg@2", "ndcg@20", "params", "params_mb_fp32",
              "train_seconds", "wall_seconds", "infer_ms_per_sample", "epochs", "reported",
              "max_over_epochs:recall@20"):
        assert c in rows[0], c
    for r in ours:
        model, cfg, _ = build_from_checkpoint(out / "runs" / r["model"])
        assert int(r["params"]) == count_parameters(model)
        assert float(r["params_mb_fp32"]) == pytest.approx(count_parameters(model) * 4 / 1e6, abs=1e-3)
        assert r["epochs"] == "1" and r["reported"].startswith("test @ last epoch")
        assert cfg.data.protocol == "paper" and cfg.data.max_len == 12
        assert float(r["infer_ms_per_sample"]) > 0
        assert float(r["max_over_epochs:recall@20"]) >= float(r["recall@20"])
    assert float(paper[0]["recall@20"]) == pytest.approx(0.15564)  # SASRec, ML-1M, as published
    assert paper[0]["ndcg@20"] == ""  # the paper reports no NDCG
    md = (out / "compare.md").read_text()
    assert "paper Table 2" in md and "t2diff compare --models sasrec caser dat" in md
    assert "authors' reporting" in md and "optimistic" in md

    # --resume: finished runs are reused, not retrained, with the same numbers
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 3
    again = _rows(out)
    assert [r["recall@20"] for r in again] == [r["recall@20"] for r in rows]


def test_compare_loo_without_paper(synthetic_prepared, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "gru4rec", "bert4rec", "--config-dir", str(CONFIGS), "--out", str(out),
                 "--no-progress", f"data.path={synthetic_prepared}", *TINY, "train.select_metric=ndcg@2"]) == 0
    rows = _rows(out)
    assert [r["model"] for r in rows] == ["gru4rec", "bert4rec"] and {r["source"] for r in rows} == {"ours"}
    assert all("selected on valid ndcg@2" in r["reported"] for r in rows)
    assert "paper Table 2" not in (out / "compare.md").read_text()

    # --resume with a larger train.epochs extends the finished runs; any other change is an error
    base = ["compare", "--models", "gru4rec", "bert4rec", "--config-dir", str(CONFIGS), "--out", str(out),
            "--no-progress", "--resume", f"data.path={synthetic_prepared}", *TINY, "train.select_metric=ndcg@2"]
    assert main([*base, "train.epochs=2"]) == 0
    assert [r["epochs"] for r in _rows(out)] == ["2", "2"]
    assert main([*base, "train.epochs=2", "train.lr=0.1"]) == 2


def _write(path: Path, **sections: dict) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def test_disagreeing_data_path_is_an_error_unless_overridden(synthetic_prepared, tmp_path, capsys):
    a = _write(tmp_path / "a.yaml", data={"path": str(synthetic_prepared), "max_len": 12}, model={"name": "sasrec"})
    b = _write(tmp_path / "b.yaml", data={"path": str(tmp_path / "elsewhere"), "max_len": 20},
               model={"name": "caser"}, train={"seed": 7})
    assert main(["compare", "--configs", str(a), str(b), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "disagree on data.path" in capsys.readouterr().err
    assert not (tmp_path / "o" / "runs").exists()

    entries, notes = resolve_entries(CompareOptions(out=tmp_path / "o", configs=[a, b],
                                                    overrides=[f"data.path={synthetic_prepared}"]))
    # the shared settings follow the first config; every forced change is noted
    assert [e.cfg.data.max_len for e in entries] == [12, 12] and [e.cfg.train.seed for e in entries] == [2025] * 2
    assert any("data.max_len 20 -> 12" in n for n in notes) and any("train.seed 7 -> 2025" in n for n in notes)

    # MODEL:KEY=VALUE reaches one model only (its own epoch budget); a label matching no model is an error
    entries, _ = resolve_entries(CompareOptions(out=tmp_path / "o", configs=[a, b], overrides=[
        f"data.path={synthetic_prepared}", "caser:train.epochs=3", "a:train.lr=0.01"]))
    assert [e.cfg.train.epochs for e in entries] == [50, 3] and [e.cfg.train.lr for e in entries] == [0.01, 0.001]
    with pytest.raises(ConfigError, match="match no compared model"):
        resolve_entries(CompareOptions(out=tmp_path / "o", configs=[a, b], overrides=[
            f"data.path={synthetic_prepared}", "gru4rec:train.epochs=3"]))


def test_paper_table2_values():
    ml = paper_table2("ml-1m")
    assert ml["T2Diff"].metrics == {"recall@2": 0.07738, "recall@20": 0.27727, "mrr@2": 0.06076, "mrr@20": 0.0873}
    kr = paper_table2("kuairand")  # printed x10 in the paper: back to raw metrics
    assert kr["T2Diff"].metrics["recall@100"] == pytest.approx(0.025294)
    with pytest.raises(ConfigError):
        paper_table2("generic")


def test_parallel_jobs_with_only_then_tabulate_with_no_train(synthetic_prepared, tmp_path, capsys):
    """--only trains a subset with the settings forced over the whole list (so the runs are reusable as they
    are); --no-train tabulates finished runs and leaves the unfinished out, training nothing."""
    out = tmp_path / "cmp"
    base = ["compare", "--models", "sasrec", "caser", "gru4rec", "--config-dir", str(CONFIGS), "--protocol", "paper",
            "--out", str(out), "--no-progress", f"data.path={synthetic_prepared}", *TINY, "caser:data.max_len=20"]
    assert main([*base, "--only", "caser"]) == 0
    assert (out / "runs" / "caser" / "metrics.json").exists() and not (out / "runs" / "sasrec").exists()
    assert not (out / "compare.md").exists()
    _, cfg, _ = build_from_checkpoint(out / "runs" / "caser")
    assert cfg.data.max_len == 12  # forced to the first model's (sasrec) although caser asked for 20
    assert main([*base, "--only", "sasrec"]) == 0
    capsys.readouterr()
    assert main([*base, "--no-train"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 2 and "training with" not in printed
    assert [r["model"] for r in _rows(out)] == ["sasrec", "caser"]
    assert not (out / "runs" / "gru4rec").exists()
    assert "not in the table (no finished run in" in (out / "compare.md").read_text()
    assert "runs/gru4rec" in (out / "compare.md").read_text()
    assert main([*base, "--only", "bert4rec"]) == 2  # not among the compared runs


def test_paper_rows_follow_t2diff_ablation_switches():
    from t2diff.compare import paper_method

    assert paper_method({"name": "t2diff"}) == "T2Diff"
    assert paper_method({"name": "t2diff", "diffusion": False}) == "Mixed-attention"
    assert paper_method({"name": "t2diff", "drift": False}) == "W/O DP"
    assert paper_method({"name": "t2diff", "kl_positions": "last"}) is None  # ours, not in the paper
    assert paper_method({"name": "dat"}) == "DAT+" and paper_method({"name": "mine"}) is None
    assert {"Mixed-attention", "W/O DP", "T2Diff"} <= set(paper_table2("ml-1m"))


def _fixed_reports() -> dict[str, Report]:
    """Two reports covering every branch of the writers: paper protocol with Table 2 rows, max over epochs,
    a resumed run, NaN timing, a variant without a paper row; loo, KuaiRand columns, in progress, a missing run."""
    paper_cfg = experiment_from_dict({"data": {"path": "cache/ml-1m", "protocol": "paper", "max_len": 12},
                                      "eval": {"ks": [2, 20]}})
    r_paper = [
        ModelResult("sasrec", "sasrec", "configs/ml-1m/sasrec-paper.yaml",
                    {"recall@2": 0.071234567, "recall@20": 0.25, "mrr@2": 0.0601, "mrr@20": 0.08123456789,
                     "ndcg@2": 0.065, "ndcg@20": 0.12}, "test @ last epoch (3)", 3, 1234567, 12.345, 20.0,
                    0.123456, {"recall@2": 0.08, "recall@20": 0.26, "mrr@2": 0.07, "mrr@20": 0.09, "ndcg@2": 0.07,
                               "ndcg@20": 0.13}, paper_method="SASRec"),
        ModelResult("t2diff", "t2diff", "configs/ml-1m/t2diff-paper.yaml",
                    {"recall@2": 0.07, "recall@20": 0.27, "mrr@2": 0.06, "mrr@20": 0.087}, "test @ last epoch (2)", 2,
                    42, 1.0, None, float("nan"), None, skipped=True, paper_method="T2Diff"),
        ModelResult("t2diff-mixed", "t2diff", "cfg/t2diff-mixed.yaml", {"recall@2": 1.0, "recall@20": 0.5}, "x", 1,
                    7, 0.0, 0.01, 2.5, {"recall@2": 1.0}, paper_method="Mixed-attention"),
        ModelResult("t2diff-last", "t2diff", "cfg/t2diff-last.yaml", {"recall@2": 0.1}, "y", 1, 8, 0.5, 0.75,
                    0.001, None, paper_method=None),
    ]
    paper_opts = CompareOptions(out=Path("cmp-paper"), models=["sasrec", "t2diff"], protocol="paper",
                                overrides=["train.epochs=3", "sasrec:train.lr=0.01", "t2diff:model.drift=false"],
                                paper=True, paper_dataset="ml-1m", max_over_epochs=True, resume=True,
                                device="cuda")
    loo_cfg = experiment_from_dict({"data": {"path": "cache/kuairand"}, "eval": {"ks": [10, 100]}})
    r_loo = [ModelResult("gru4rec", "gru4rec", "configs/kuairand/gru4rec.yaml",
                         {"recall@10": 0.01, "recall@100": 0.05, "mrr@10": 0.004, "mrr@100": 0.0055, "ndcg@10": 0.006,
                          "ndcg@100": 0.0123}, "test @ epoch 4 (selected on valid ndcg@10)", 9, 99, 3.21, 4.56,
                         0.05, paper_method="GRU4Rec")]
    loo_opts = CompareOptions(out=Path("cmp-loo"), configs=[Path("configs/kuairand/gru4rec.yaml"),
                                                            Path("configs/kuairand/dat.yaml")],
                              paper=True, paper_dataset="kuairand", only=[], no_train=True, progress=False,
                              command="t2diff compare --configs a.yaml b.yaml", infer_batch=64, infer_repeats=3)
    return {
        "paper": Report("ml-1m", paper_cfg, r_paper, paper_table2("ml-1m"), ["caser: data.max_len 20 -> 12 (forced)"],
                        paper_opts, time.perf_counter(), 1234, "ml-1m", finished=True),
        "loo": Report("kuairand", loo_cfg, r_loo, paper_table2("kuairand"), [], loo_opts, time.perf_counter(), 56,
                      "kuairand", missing=["dat"]),
    }


def _mask(md: str) -> str:
    """The report's clock and machine spans, which no fixture can hold."""
    md = re.sub(r"wall time (of this invocation|so far)(.*?): [\d.]+ min; written \d{4}-\d\d-\d\d \d\d:\d\d UTC",
                r"wall time \1\2: <min> min; written <date>", md)
    md = re.sub(r"; commit `[^`]+`$", "; commit `<commit>`", md, flags=re.M)
    return re.sub(r"- machine: .+, \d+ CPU\(s\), torch .+, \d+ torch thread\(s\), device",
                  "- machine: <machine>, <n> CPU(s), torch <version>, <n> torch thread(s), device", md)


def test_report_files_match_the_fixtures_byte_for_byte(tmp_path, monkeypatch):
    """compare.md / compare.csv of a fixed list of results, as the writers produced them before compare was split
    into a package (tests/fixtures/compare); the Markdown's clock and machine spans are masked."""
    monkeypatch.chdir(tmp_path)  # the reports' --out folders are relative: they are printed in the Markdown
    for name, report in _fixed_reports().items():
        report.write()
        assert (report.opts.out / "compare.csv").read_bytes() == (FIXTURES / f"{name}.csv").read_bytes(), name
        md = _mask((report.opts.out / "compare.md").read_bytes().decode())
        assert md.encode() == (FIXTURES / f"{name}.md").read_bytes(), name
