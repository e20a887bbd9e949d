"""Session = the most recent behaviours (DESIGN §1): split by a time gap where timestamps exist, else the
last k behaviours."""

from __future__ import annotations

import torch
from torch import Tensor


def session_mask(seq: Tensor, seq_time: Tensor | None, k: int = 10, gap_seconds: int | None = None) -> Tensor:
    """[B, L] bool, True on the session part of left-padded ``seq`` [B, L].

    Without ``gap_seconds`` (or without times): the last k non-padding behaviours. With it: the maximal
    suffix whose consecutive behaviours are at most ``gap_seconds`` apart, capped at k and never empty for a
    non-empty history (the last behaviour always belongs to the session)."""
    b, l = seq.shape
    valid = seq > 0
    from_end = torch.arange(l - 1, -1, -1, device=seq.device).expand(b, l)  # 0 at the last column
    mask = valid & (from_end < k)
    if gap_seconds is not None and seq_time is not None:
        gaps = torch.zeros_like(seq_time)
        gaps[:, 1:] = seq_time[:, 1:] - seq_time[:, :-1]  # gap before each position
        breaks = (gaps > gap_seconds) & valid  # a new session starts at this position
        # positions at or after the last break belong to the session
        idx = torch.arange(l, device=seq.device).expand(b, l)
        last_break = torch.where(breaks, idx, torch.zeros_like(idx)).max(dim=1, keepdim=True).values
        mask &= idx >= last_break
    return mask
