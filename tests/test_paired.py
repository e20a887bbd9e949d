"""Paired statistics against hand-computed values, the seed-mean rule, and the rank dump of a trained run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import load_benchmark

from t2diff.paired import RunRanks, load_ranks, paired, per_example, save_ranks, seed_mean


def test_per_example_by_hand():
    m = per_example(np.array([1, 3, 11, 25]))
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 0.5, 0.0, 0.0])  # 1 / log2(3 + 1) = 0.5
    np.testing.assert_array_equal(m["recall@20"], [1.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="1-based"):
        per_example(np.array([0, 2]))
    with pytest.raises(ValueError, match="unknown metric"):
        per_example(np.array([1]), ("mrr@10",))


def test_paired_by_hand():
    r = paired(np.array([1.0, 0, 1, 1]), np.array([0.0, 0, 1, 0]))  # d = [1, 0, 0, 1]
    assert r["diff"] == 0.5
    assert r["se"] == pytest.approx(math.sqrt(1 / 3) / 2)  # std(ddof=1) = sqrt(1/3), n = 4
    assert r["z"] == pytest.approx(0.5 / (math.sqrt(1 / 3) / 2))
    with pytest.raises(ValueError, match="shape"):
        paired(np.zeros(3), np.zeros(4))


def _runs(model: str, seed: int, masked: list[int], unmasked: list[int] | None = None) -> RunRanks:
    n = len(masked)
    return RunRanks(np.arange(n), np.full(n, 5), np.array(masked), np.array(unmasked or masked), model, seed,
                    f"{model}-s{seed}")


def test_seed_mean_averages_each_example_over_seeds():
    # recall@20 hits: A seed 1 [1,1,0,0], seed 2 [1,0,1,0]; B seed 1 [0,1,0,0], seed 2 [0,0,1,0]
    a = [_runs("a", 1, [1, 2, 30, 30]), _runs("a", 2, [1, 30, 2, 30])]
    b = [_runs("b", 2, [30, 30, 2, 30]), _runs("b", 1, [30, 2, 30, 30])]  # order does not matter: paired by seed
    r = seed_mean(a, b, masked=True)["recall@20"]
    # per-example means: A [1, .5, .5, 0], B [0, .5, .5, 0] -> d [1, 0, 0, 0]
    assert (r["a"], r["b"], r["diff"], r["seeds"], r["n"]) == (0.5, 0.25, 0.25, 2, 4)
    assert r["se"] == pytest.approx(np.std([1, 0, 0, 0], ddof=1) / 2)


def test_seed_mean_rejects_unpaired_seeds_and_other_examples():
    with pytest.raises(ValueError, match="pair up"):
        seed_mean([_runs("a", 1, [1, 2])], [_runs("b", 2, [1, 2])], masked=True)
    other = RunRanks(np.array([0, 7]), np.array([5, 5]), np.array([1, 2]), np.array([1, 2]), "b", 1, "b-other")
    with pytest.raises(ValueError, match="b-other.*other test examples"):
        seed_mean([_runs("a", 1, [1, 2])], [other], masked=True)
    with pytest.raises(ValueError, match="positions has 1 rows"):
        RunRanks(np.arange(2), np.array([5]), np.array([1, 2]), np.array([1, 2]), "a", 1)


def test_save_load_round_trip(tmp_path):
    r = _runs("sasrec", 2026, [1, 4, 9], [2, 5, 9])
    save_ranks(tmp_path / "x" / "r.npz", r)
    back = load_ranks(tmp_path / "x" / "r.npz")
    assert (back.model, back.seed, back.label) == ("sasrec", 2026, "sasrec-s2026")
    np.testing.assert_array_equal(back.ranks(False), [2, 5, 9])
    np.testing.assert_array_equal(back.ranks(True), [1, 4, 9])


def _script():
    return load_benchmark("seed_pairs")


def test_dump_matches_the_evaluator_and_mean_reports(run, tmp_path):
    import json

    sp = _script()
    assert sp.main(["dump", str(run), "--out", str(tmp_path / "a.npz"), "--threads", "1"]) == 0
    r = load_ranks(tmp_path / "a.npz")
    test = json.loads((run / "metrics.json").read_text())["test"]  # the run's own test pass (eval.mask_seen false)
    assert r.model == "sasrec" and len(r.users) > 0
    for k in ("ndcg@10", "recall@10"):
        assert per_example(r.ranks_unmasked, (k,))[k].mean() == pytest.approx(test[k], abs=1e-6)
    # masking lifts every unseen target and sinks a repeated one to the bottom (the evaluator's documented rule)
    worst = r.ranks_masked == r.ranks_masked.max()
    assert (r.ranks_masked[~worst] <= r.ranks_unmasked[~worst]).all() and worst.any()
    # the same run against itself: zero difference, NaN z (SE 0), and the report says it is not a win
    assert sp.main(["mean", "--a", str(tmp_path / "a.npz"), "--b", str(tmp_path / "a.npz"), "--out",
                    str(tmp_path), "--name", "self"]) == 0
    md = (tmp_path / "self.md").read_text()
    assert "+0.0000 ± 0.0000" in md and "| no |" in md and "Command" in md
    assert md.startswith("# sasrec (A) against sasrec (B)")
    assert sp.main(["mean", "--a", str(tmp_path / "a.npz"), "--b", str(tmp_path / "a.npz"), "--out",
                    str(tmp_path), "--name", "named", "--label-a", "with x", "--label-b", "without"]) == 0
    assert (tmp_path / "named.md").read_text().startswith("# with x (A) against without (B)")


def test_run_ranks_replay_equals_fresh_passes(run):
    """run_test_ranks runs the user tower once and replays it for the other masking: both rank lists must equal
    fresh passes of the evaluator, and the cache is rebuilt when the run changes."""
    import os

    from t2diff.evaluate import rank_examples
    from t2diff.run import build_from_checkpoint, build_split
    from t2diff.run_ranks import CACHE, cached_test_ranks, run_test_ranks

    r = run_test_ranks(run)
    model, cfg, ds = build_from_checkpoint(run)
    test = build_split(cfg, ds).test
    for masked in (True, False):
        fresh = rank_examples(model, ds, test, cfg.data.max_len, cfg.eval.batch_size, mask_seen=masked).ranks
        np.testing.assert_array_equal(r.ranks(masked), fresh)
    c = cached_test_ranks(run)
    np.testing.assert_array_equal(c.ranks_masked, r.ranks_masked)
    stamp = (run / CACHE).stat().st_mtime
    os.utime(run / "metrics.json", (stamp + 10, stamp + 10))  # the run changed after the cache was written
    cached_test_ranks(run)
    assert (run / CACHE).stat().st_mtime > stamp
    (run / CACHE).unlink()
