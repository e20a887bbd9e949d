"""A trained run's test ranks (``t2diff.paired.RunRanks``): the checkpoint a run reports (best.pt under
leave-one-out, last.pt under the paper protocol), its own test split (eval.max_users sample included) and its own
inference settings, every target ranked over all items with seen items masked and not. Paired comparisons of two
runs on the same test examples read these (``benchmarks/seed_pairs.py``, the orderings of ``t2diff reproduce``).

``cached_test_ranks`` keeps them beside the run (``test_ranks.npz``) and ranks again when the run has changed since
(its metrics.json is newer), so a report rebuilt after a resume never pairs stale ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from t2diff.batch import Batch
from t2diff.paired import RunRanks, load_ranks, save_ranks

CACHE = "test_ranks.npz"


def run_test_ranks(run: str | Path, data_path: str | None = None, batch_size: int | None = None) -> RunRanks:
    """Rank the run's test examples with its reported checkpoint; batch_size defaults to the run's eval.batch_size
    (the one its trainer evaluated with)."""
    from t2diff.evaluate import rank_examples
    from t2diff.run import build_from_checkpoint, build_split

    model, cfg, ds = build_from_checkpoint(run, data_path)
    test = build_split(cfg, ds).test
    bs = batch_size or cfg.eval.batch_size
    # the user tower runs once: the run's own masking first (a fresh pass, as its trainer tested), then the other
    # masking replays the same user vectors in the same order (same examples and batches), at half the cost
    vecs: list[torch.Tensor] = []

    def record(batch: Batch) -> torch.Tensor:
        v = model.user_embeddings(batch)  # [B, D]
        vecs.append(v)
        return v

    replay = iter(vecs)

    def again(batch: Batch) -> torch.Tensor:
        v = next(replay)
        if v.shape[0] != batch.target.shape[0]:
            raise RuntimeError(f"{run}: replayed user vectors do not match the batch ({v.shape[0]} rows, "
                               f"{batch.target.shape[0]} targets)")
        return v

    own = bool(cfg.eval.mask_seen)
    ranks = {own: rank_examples(model, ds, test, cfg.data.max_len, bs, mask_seen=own, user_fn=record).ranks}
    ranks[not own] = rank_examples(model, ds, test, cfg.data.max_len, bs, mask_seen=not own, user_fn=again).ranks
    return RunRanks(np.asarray(test.users), np.asarray(test.positions), np.asarray(ranks[True], dtype=np.int32),
                    np.asarray(ranks[False], dtype=np.int32), cfg.model["name"], int(cfg.train.seed), str(run))


def cached_test_ranks(run: str | Path, data_path: str | None = None) -> RunRanks:
    """``run_test_ranks`` kept in RUN/test_ranks.npz; ranked again when RUN/metrics.json is newer than the file.
    Raises FileNotFoundError when the run has no metrics.json (not finished)."""
    run = Path(run)
    metrics = run / "metrics.json"
    if not metrics.exists():
        raise FileNotFoundError(f"{run}: no metrics.json (the run has not finished)")
    f = run / CACHE
    if f.exists() and f.stat().st_mtime >= metrics.stat().st_mtime:
        return load_ranks(f)
    r = run_test_ranks(run, data_path)
    save_ranks(f, r)
    return r
