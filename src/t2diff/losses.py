"""Training losses over the item catalogue."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def full_softmax_ce(user_vecs: Tensor, item_vecs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the full catalogue. user_vecs [N, D], item_vecs [I+1, D], targets [N] in 1..I.

    The padding column 0 is excluded so it can never absorb probability mass."""
    logits = user_vecs @ item_vecs.T  # [N, I+1]
    pad = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    pad[0] = True
    logits = logits.masked_fill(pad, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, targets)
