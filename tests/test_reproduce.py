"""``t2diff reproduce``: the plan over the repository's configs, the self-contained run configs, and a whole
reproduction on a tiny data set, interrupted mid-run and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from t2diff.cli import main
from t2diff.compare.report import ModelResult
from t2diff.config import ConfigError, load_config
from t2diff.paired import RunRanks
from t2diff.reproduce import ReproduceOptions, build_plan, reproduce
from t2diff.reproduce.plan import TABLE2, RunSpec, write_run_config
from t2diff.reproduce.report import compare_pair, compare_rows
from t2diff.reproduce.runner import RunOutcome

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_every_table2_row_has_a_config_at_our_scale(protocol: str) -> None:
    for dataset in ("ml-1m", "kuairand"):
        (st,) = build_plan(REPO / "configs", dataset, [protocol], ["ours"], ["table2"])
        assert not st.missing, st.missing
        assert [r.method for r in st.runs] == [m for m, _, _ in TABLE2] + ["T2DiffCausal (ours)"]
        assert len({r.label for r in st.runs}) == len(st.runs)
        ablations = {r.method: r for r in st.runs if r.method in ("Mixed-attention", "W/O DP")}
        t2 = next(r for r in st.runs if r.method == "T2Diff")
        assert all(a.source == t2.source and a.overrides for a in ablations.values())  # T2Diff + one switch


def test_tables_3_and_4_reuse_table2s_t2diff_run() -> None:
    plan = build_plan(REPO / "configs", "ml-1m", ["paper"], ["ours"], ["table2", "table3", "table4"])
    t3, t4 = plan[1], plan[2]
    assert [r.method for r in t3.runs] == ["beta=linear", "beta=log", "beta=exp"]
    assert [r.method for r in t4.runs] == ["T=10", "T=50", "T=200"]
    t2cfg = load_config(REPO / "configs/ml-1m/t2diff.yaml").model["diffusion"]
    for st, key in ((t3, "schedule"), (t4, "steps")):
        reused = [r for r in st.runs if r.reuse]
        assert len(reused) == 1 and reused[0].reuse == "table2-paper-ours/t2diff"
        assert reused[0].method.endswith(f"={t2cfg[key]}")  # the row whose setting is T2Diff's default
    # without Table 2 in the plan every row is trained
    (t3_alone,) = build_plan(REPO / "configs", "ml-1m", ["paper"], ["ours"], ["table3"])
    assert not any(r.reuse for r in t3_alone.runs)


def test_unknown_plan_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="movielens"):
        build_plan(REPO / "configs", "movielens", ["paper"], ["ours"], ["table2"])
    with pytest.raises(ConfigError, match="scale"):
        build_plan(REPO / "configs", "ml-1m", ["paper"], ["huge"], ["table2"])


def test_run_configs_are_self_contained(tmp_path: Path) -> None:
    (st,) = build_plan(REPO / "configs", "ml-1m", ["paper"], ["ours"], ["table2"])
    wo_dp = next(r for r in st.runs if r.method == "W/O DP")
    path = write_run_config(wo_dp, tmp_path, ["eval.ks=[2,20]"])
    raw = yaml.safe_load(path.read_text())
    assert "base" not in raw  # the base chain is merged in: the file alone defines the run
    cfg = load_config(path)
    want = load_config(REPO / "configs/ml-1m/t2diff.yaml", ["model.diffusion.drift=false", "eval.ks=[2,20]"])
    assert cfg.to_dict() == want.to_dict()


def test_orderings_use_binomial_standard_errors() -> None:
    # p = 0.5 and 0.4 on 400 examples: se 0.025 and 0.0245, z = 0.1 / 0.035 = 2.86
    assert compare_pair(0.5, 0.4, 400, ">") == "holds (0.5000 vs 0.4000, z +2.9, unpaired)"
    assert compare_pair(0.5, 0.45, 400, ">").startswith("does not hold")
    assert compare_pair(0.45, 0.5, 400, ">=").startswith("holds")  # not clearly worse
    assert compare_pair(0.5, 0.45, 400, "~").startswith("holds")
    assert compare_pair(None, 0.4, 400, ">") == "not measured"



def _row(ranks: list[int] | None, recall: float, users: list[int] | None = None) -> RunOutcome:
    """A finished run with recall@20 = ``recall`` and, optionally, its per-example test ranks."""
    res = ModelResult(name="m", model="m", config="", test={"recall@20": recall}, reported="test", epochs_run=1,
                      params=1, train_seconds=0.0, wall_seconds=None, infer_ms=0.0)
    rr = None
    if ranks is not None:
        n = len(ranks)
        u = np.arange(n) if users is None else np.asarray(users)
        rr = RunRanks(u, np.zeros(n, int), np.asarray(ranks), np.asarray(ranks), "m", 0)
    return RunOutcome(RunSpec("m", "m", Path("m.yaml")), Path(), res, "all 1 epochs", rr, False)


def test_orderings_pair_runs_on_the_same_examples() -> None:
    # 10 examples; A hits (rank <= 20) on 0-5, B on 0-3: d = [0,0,0,0,1,1,0,0,0,0], mean 0.2,
    # std (ddof 1) = sqrt(10 * 0.2 * 0.8 / 9) = 0.4216, SE 0.1333, z = 1.5; unpaired it would be 0.6 / 0.4 -> 0.9
    a = [1, 2, 3, 4, 5, 6, 50, 60, 70, 80]
    b = [1, 2, 3, 4, 30, 40, 50, 60, 70, 80]
    assert compare_rows(_row(a, 0.6), _row(b, 0.4), "recall@20", 10, ">") == \
        "does not hold (0.6000 vs 0.4000, z +1.5, paired)"
    assert compare_pair(0.6, 0.4, 10, ">").endswith("z +0.9, unpaired)")
    # 40 copies of the pattern: paired SE shrinks as 1/sqrt(n); std = sqrt(400 * 0.16 / 399) = 0.4005,
    # z = 0.2 / (0.4005 / 20) = 9.99
    assert compare_rows(_row(a * 40, 0.6), _row(b * 40, 0.4), "recall@20", 400, ">").endswith("z +10.0, paired)")
    # fallbacks, labelled: ranks missing, other examples, ranks that do not reproduce the reported value
    assert compare_rows(_row(None, 0.6), _row(b, 0.4), "recall@20", 10, ">").endswith("unpaired)")
    other = _row(b, 0.4, users=list(range(10, 20)))
    assert compare_rows(_row(a, 0.6), other, "recall@20", 10, ">").endswith("unpaired)")
    assert compare_rows(_row(a, 0.7), _row(b, 0.4), "recall@20", 10, ">").endswith("unpaired)")
    assert compare_rows(_row(a, 0.6), None, "recall@20", 10, ">") == "not measured"

TINY = {
    "sasrec.yaml": {"data": {"protocol": "loo", "max_len": 12},
                    "model": {"name": "sasrec", "hidden": 16, "num_blocks": 1, "ffn_dim": 32},
                    "train": {"epochs": 2, "batch_size": 16, "lr": 0.005, "threads": 1}},
    "t2diff.yaml": {"data": {"protocol": "paper", "max_len": 12},
                    "model": {"name": "t2diff", "hidden": 16, "diffusion": {"steps": 3, "schedule": "exp"},
                              "unet": {"levels": 3},
                              "attention": {"session_len": 4, "heads": 2, "ffn_dim": 32, "din_hidden": 16,
                                            "time_emb_dim": 4, "session_gap": 30}},
                    "train": {"epochs": 2, "batch_size": 16, "lr": 0.005, "threads": 1}},
}


def _tiny_root(tmp: Path, prepared: Path) -> Path:
    root = tmp / "configs"
    (root / "ml-1m").mkdir(parents=True)
    for name, raw in TINY.items():
        raw = {**raw, "data": {**raw["data"], "path": str(prepared)}}
        (root / "ml-1m" / name).write_text(yaml.safe_dump(raw))
    return root


def test_reproduce_end_to_end_interrupted_and_resumed(tmp_path: Path, synthetic_prepared: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from t2diff.train import Trainer

    root = _tiny_root(tmp_path, synthetic_prepared)
    out = tmp_path / "out"
    opts = ReproduceOptions(dataset="ml-1m", out=out, config_root=root, protocols=["paper"], scales=["ours"],
                            tables=["table2", "table3"], with_ours=False, progress=False, infer_repeats=1,
                            figure4_users=8)
    calls: list[str] = []
    armed = [True]
    real_epoch = Trainer.train_epoch

    def interrupt(self: Trainer, epoch: int) -> float:  # the 'beta=linear' run dies in its second epoch
        calls.append(self.run_dir.name)
        if armed[0] and self.run_dir.name == "t2diff-beta-linear" and epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        reproduce(opts, log=lambda s: None)
    t2 = out / "table2-paper-ours" / "runs"
    finished = {d.name: (d / "metrics.json").stat().st_mtime for d in t2.iterdir()}
    assert set(finished) == {"sasrec", "t2diff", "t2diff-mixed-attention", "t2diff-wo-dp"}
    partial = (out / "REPORT.md").read_text()
    assert "in progress" in partial and "| 0.2773 |" in partial  # Table 2 written, the paper's T2Diff beside ours
    linear = out / "table3-ours" / "runs" / "t2diff-beta-linear"
    assert (linear / "last.pt").exists() and not (linear / "metrics.json").exists()

    with pytest.raises(ConfigError, match="--resume"):  # nothing is overwritten without --resume
        reproduce(opts, log=lambda s: None)
    calls.clear()
    armed[0] = False
    opts.resume = True
    reproduce(opts, log=lambda s: None)
    assert calls == ["t2diff-beta-linear", "t2diff-beta-log", "t2diff-beta-log"]  # epoch 2 of linear, then log
    assert {d.name: (d / "metrics.json").stat().st_mtime for d in t2.iterdir()} == finished  # reused, not retrained
    hist = [json.loads(x) for x in (linear / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    report = (out / "REPORT.md").read_text()
    assert "status: finished" in report
    assert "the table2-paper-ours run" in report  # beta=exp is Table 2's T2Diff run
    assert "## Figure 4" in report and (out / "figure4-ours" / "diffusion_cosine_trace.png").exists()
    assert (out / "table2-paper-ours.png").exists() and (out / "table3-ours.png").exists()
    data = json.loads((out / "reproduce.json").read_text())
    # the interrupted pass's wall time is kept beside the resumed one's, not overwritten
    inv = data["invocations"]
    assert [x["finished"] for x in inv] == [False, True] and len({x["id"] for x in inv}) == 2
    assert inv[-1]["wall_minutes"] == data["wall_minutes"]
    assert f"2 invocations wrote this folder, {sum(x['wall_minutes'] for x in inv):.1f} min wall in all" in report
    assert "(stopped before the end: time to its last report)" in report
    rows = {r["method"]: r for r in data["studies"]["table2-paper-ours"]["rows"]}
    assert rows["T2Diff"]["status"] == "all 2 epochs" and rows["SASRec"]["test"]["recall@20"] >= 0
    assert "double-counted first batch" in report
    t2_metrics = json.loads((t2 / "t2diff" / "metrics.json").read_text())
    assert any(k.startswith("test_authors_double_count") for k in t2_metrics)  # the authors' count, labelled
    assert "Caser: no" in report  # rows without a config are listed, not silently dropped
    assert "T2Diff > Mixed-attention: " in report and ", paired)" in report  # every run ranked: orderings paired
    assert (t2 / "t2diff" / "test_ranks.npz").exists()
    assert "Popularity floor on the same test examples" in report
    assert data["studies"]["table2-paper-ours"]["popularity"]["unmasked"]["recall@20"] >= 0


def test_reproduce_cli_rejects_an_unknown_only(tmp_path: Path, synthetic_prepared: Path, capsys) -> None:
    root = _tiny_root(tmp_path, synthetic_prepared)
    rc = main(["reproduce", "ml-1m", "--config-root", str(root), "--out", str(tmp_path / "o"), "--only",
               "table9", "--protocols", "paper", "--scales", "ours", "--no-progress"])
    assert rc == 2 and "table9" in capsys.readouterr().err


def test_eval_users_is_a_labelled_sample_in_every_run(tmp_path: Path, synthetic_prepared: Path) -> None:
    root = _tiny_root(tmp_path, synthetic_prepared)
    out = tmp_path / "out"
    opts = ReproduceOptions(dataset="ml-1m", out=out, config_root=root, protocols=["loo"], scales=["ours"],
                            tables=["table2"], with_ours=False, progress=False, infer_repeats=1,
                            only=["table2-loo-ours/sasrec"], eval_users=9, overrides=["eval.batch_size=64"])
    reproduce(opts, log=lambda s: None)
    metrics = json.loads((out / "table2-loo-ours" / "runs" / "sasrec" / "metrics.json").read_text())
    assert metrics["num_test_examples"] == 9 and metrics["eval_users"]["sampled"] == 9
    assert metrics["eval_users"]["of"] > 9
    assert "max_users: 9" in (out / "table2-loo-ours" / "configs" / "sasrec.yaml").read_text()
    report = (out / "REPORT.md").read_text()
    assert "seeded sample of 9 test users" in report and "test, 9 examples" in report
    assert "overrides for every run: `eval.batch_size=64`" in report
    assert json.loads((out / "reproduce.json").read_text())["eval_users"] == 9
    with pytest.raises(ConfigError, match="--eval-users"):
        reproduce(ReproduceOptions(dataset="ml-1m", out=tmp_path / "o2", config_root=root, eval_users=0),
                  log=lambda s: None)


def test_a_rows_mask_is_the_one_its_run_used(tmp_path: Path) -> None:
    """compare imposes the first model's eval.mask_seen on every row (FORCED), so the study's config of a later
    row can say otherwise; the paired orderings must read the run's own saved config, or the ranks never reproduce
    the row's reported value and the line falls back to unpaired SE."""
    from t2diff.reproduce.runner import run_mask_seen

    study = tmp_path / "t2diff.yaml"
    study.write_text("model:\n  name: sasrec\neval:\n  mask_seen: false\n")
    run = tmp_path / "run"
    run.mkdir()
    assert run_mask_seen(run, study) is False  # no saved config yet: the study's
    (run / "config.yaml").write_text("model:\n  name: sasrec\neval:\n  mask_seen: true\n")
    assert run_mask_seen(run, study) is True


def test_invocation_log_reads_a_report_from_before_it_existed(tmp_path: Path) -> None:
    from t2diff.reproduce.report import _invocation_lines, _invocations

    prov = {"date": "2026-12-08T03:00:00Z", "command": "t2diff reproduce ml-1m --resume", "commit": "abc"}
    old = {"provenance": {"date": "2026-12-01T00:00:00Z", "command": "t2diff reproduce ml-1m", "commit": "x"},
           "wall_minutes": 30.7, "finished": True}
    f = tmp_path / "reproduce.json"
    f.write_text(json.dumps(old))
    inv = _invocations(f, prov, 1.25, True, "me")
    assert [(x["date"], x["wall_minutes"]) for x in inv] == [("2026-12-01T00:00:00Z", 30.7),
                                                              ("2026-12-08T03:00:00Z", 1.25)]
    f.write_text(json.dumps({**old, "invocations": inv}))  # the same invocation writing again replaces itself
    again = _invocations(f, prov, 2.0, True, "me")
    assert [x["wall_minutes"] for x in again] == [30.7, 2.0]
    assert _invocation_lines(again)[0].startswith("- 2 invocations wrote this folder, 32.7 min wall in all")
    f.write_text("{not json")
    assert [x["id"] for x in _invocations(f, prov, 1.0, False, "me")] == ["me"]  # unreadable: only this one
    assert _invocation_lines(_invocations(tmp_path / "none.json", prov, 1.0, True, None)) == []
