"""Paired comparisons of two models on the same test examples, within one seed and as a mean over seeds.

Within one seed pair: d_i = metric_A(i) - metric_B(i) on every test example i, SE = std(d) / sqrt(n), z = mean / SE.
Over S seed pairs (each pair: both models trained with one seed) on the same examples, the pre-stated statistic of
issue 14 is the per-example mean over seeds, d̄_i = (1/S) sum_s d_i^(s), with SE = std(d̄) / sqrt(n): the users are
the sampling unit, the seeds average out each model's own training noise. Ranks are 1-based (1 = top) and each
example has one relevant item, so NDCG@K = 1 / log2(rank + 1) inside the top K, Recall@K = [rank <= K].

A run's ranks can be saved and reloaded (``save_ranks`` / ``load_ranks``, a small .npz per run), so the runs of a
seed pair need not be trained in the same session: every run is checked to hold the same test examples before
it is averaged in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRICS = ("ndcg@10", "recall@20")


def per_example(ranks: np.ndarray, metrics: tuple[str, ...] = METRICS) -> dict[str, np.ndarray]:
    """Each example's NDCG@K / Recall@K from its 1-based rank. ranks: [n]."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size and r.min() < 1:
        raise ValueError(f"ranks are 1-based, got a minimum of {r.min():g}")
    out = {}
    for m in metrics:
        name, k = m.split("@")
        cut = r <= int(k)
        if name == "ndcg":
            out[m] = np.where(cut, 1.0 / np.log2(r + 1.0), 0.0)
        elif name == "recall":
            out[m] = cut * 1.0
        else:
            raise ValueError(f"unknown metric {m!r} (ndcg@K or recall@K)")
    return out


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b, its standard error and z (a, b: per-example metrics on the same examples). [n] each."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    d = a - b
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "se": se, "z": float(d.mean() / se) if se > 0 else float("nan"), "n": len(d)}


@dataclass(frozen=True)
class RunRanks:
    """One trained run's test ranks, seen items masked and not, saved so seed pairs can meet across sessions."""

    users: np.ndarray  # [n] test users
    positions: np.ndarray  # [n] target positions in each history
    ranks_masked: np.ndarray  # [n] 1-based rank of the target, seen items masked
    ranks_unmasked: np.ndarray  # [n] the same, nothing masked
    model: str
    seed: int
    label: str = ""  # the run directory or another name for reports

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("positions", "ranks_masked", "ranks_unmasked"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RunRanks {self.label!r}: {name} has {len(getattr(self, name))} rows, users {n}")

    def ranks(self, masked: bool) -> np.ndarray:
        return self.ranks_masked if masked else self.ranks_unmasked


def save_ranks(path: Path, r: RunRanks) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, users=r.users, positions=r.positions, ranks_masked=r.ranks_masked,
                        ranks_unmasked=r.ranks_unmasked, model=np.array(r.model), seed=np.array(r.seed),
                        label=np.array(r.label))


def load_ranks(path: Path) -> RunRanks:
    with np.load(path) as z:
        return RunRanks(z["users"], z["positions"], z["ranks_masked"], z["ranks_unmasked"], str(z["model"]),
                        int(z["seed"]), str(z["label"]))


def seed_mean(a: list[RunRanks], b: list[RunRanks], masked: bool,
              metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, float]]:
    """Model A against model B as the mean over seed pairs of each example's difference (see the module doc).

    a, b: one run per seed each, paired by seed; every run must hold the same test examples in the same order.
    Raises ValueError naming the run when seeds do not pair up or the examples differ."""
    if not a:
        raise ValueError("seed_mean needs at least one seed pair")
    by_seed = {r.seed: r for r in b}
    seeds = [r.seed for r in a]
    if len(set(seeds)) != len(seeds) or len(by_seed) != len(b) or sorted(seeds) != sorted(by_seed):
        raise ValueError(f"seeds do not pair up one to one: A {seeds}, B {[r.seed for r in b]}")
    ref = a[0]
    for r in [*a, *b]:
        if not (np.array_equal(r.users, ref.users) and np.array_equal(r.positions, ref.positions)):
            raise ValueError(f"run {r.label!r} has other test examples than {ref.label!r} "
                             "(other data, split or eval.max_users sample)")
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        ma = np.mean([per_example(r.ranks(masked), (m,))[m] for r in a], axis=0)  # [n] mean over seeds
        mb = np.mean([per_example(by_seed[r.seed].ranks(masked), (m,))[m] for r in a], axis=0)
        out[m] = {**paired(ma, mb), "a": float(ma.mean()), "b": float(mb.mean()), "seeds": len(a)}
    return out
