"""Examples -> Batch, vectorised over the CSR history arrays (no Python loop per example)."""

from __future__ import annotations

import numpy as np
import torch

from t2diff.batch import Batch
from t2diff.data.prepared import PreparedDataset


def make_batch(ds: PreparedDataset, users: np.ndarray, positions: np.ndarray, max_len: int) -> Batch:
    """Inputs are the max_len behaviours before each target, left-padded; pos_targets is the input shifted
    by one with the target at the end (so it never reaches past the target)."""
    start = ds.user_ptr[users - 1]  # [B]
    tgt = start + positions  # [B] flat index of each target
    idx = tgt[:, None] - max_len + np.arange(max_len)[None, :]  # [B, L] flat indices of the inputs
    valid = idx >= start[:, None]
    safe = np.where(valid, idx, 0)
    seq = np.where(valid, ds.items[safe], 0)
    nxt = np.where(valid, ds.items[np.minimum(safe + 1, len(ds.items) - 1)], 0)  # idx+1 <= tgt when valid
    if ds.times is not None:
        seq_time = np.where(valid, ds.times[safe], 0)
        target_time = ds.times[tgt]
    else:
        seq_time = np.zeros_like(seq)
        target_time = np.zeros(len(users), dtype=np.int64)
    return Batch(
        seq=torch.from_numpy(seq.astype(np.int64)),
        target=torch.from_numpy(ds.items[tgt].astype(np.int64)),
        pos_targets=torch.from_numpy(nxt.astype(np.int64)),
        seq_time=torch.from_numpy(seq_time.astype(np.int64)),
        target_time=torch.from_numpy(np.asarray(target_time, dtype=np.int64)),
        user=torch.from_numpy(users.astype(np.int64)),
    )


def iterate_batches(ds: PreparedDataset, users: np.ndarray, positions: np.ndarray, max_len: int, batch_size: int):
    for s in range(0, len(users), batch_size):
        yield make_batch(ds, users[s: s + batch_size], positions[s: s + batch_size], max_len)
