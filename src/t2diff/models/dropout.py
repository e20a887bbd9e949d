"""Dropout whose random draws are cheap on the CPU.

``torch.nn.Dropout`` on the CPU draws one Bernoulli variate per element (``aten::bernoulli_``); at max_len 200
those draws were 25 % of a SASRec training step here (9 dropouts over [128, 200, 64..256] activations and the
[128, 1, 200, 200] attention probabilities). This module draws 64-bit random words and reads each as four 16-bit
lanes, so one draw decides four elements: about 5x cheaper for the whole dropout (forward mask + multiply), with
the same expectation. The drop probability is quantised to a multiple of 1 / 65,536 (for p = 0.1 the rate is
6,554 / 65,536 = 0.100006) and the kept values are scaled by 1 / (1 - that rate), so E[output] = input exactly.
Draws come from torch's default generator: ``torch.manual_seed`` makes them reproducible (training reseeds per
epoch, so resume repeats them). Off the CPU, ``F.dropout`` (the device's fused kernel) is used unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16  # 16-bit lanes
# True: torch's own dropout everywhere (benchmarks/bench_train.py times both in one run)
USE_TORCH_DROPOUT = False


def keep_scale(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype,
               device: torch.device | str = "cpu") -> Tensor:
    """A [shape] tensor of 0 (dropped, probability ~p) and 1 / (1 - rate) (kept), from 16-bit random lanes."""
    n = math.prod(shape)
    dropped = round(p * _LEVELS)  # lanes below this threshold are dropped
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), (1 << 63) - 1)
    lanes = words.view(torch.int16)[:n].view(shape)  # each uniform on [-32768, 32767]
    scale = _LEVELS / (_LEVELS - dropped)
    return (lanes >= dropped - (1 << 15)).to(dtype).mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """out = x * m and d x = g * m, with m saved once (a fused multiply each way)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, m: Tensor) -> Tensor:
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (m,) = ctx.saved_tensors
        return g * m, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with cheap draws on the CPU (module docstring)."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if USE_TORCH_DROPOUT or x.device.type != "cpu" or p == 1.0 or round(p * _LEVELS) == 0:
        return F.dropout(x, p, True)
    return _MaskedScale.apply(x, keep_scale(x.shape, p, x.dtype, x.device))


class Dropout(nn.Dropout):
    """Drop-in for ``nn.Dropout`` (same ``p``, same train/eval switch, no parameters, so checkpoints are the
    same) with ``dropout``'s cheap CPU draws."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def attention(q: Tensor, k: Tensor, v: Tensor, allow: Tensor, p: float, training: bool) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=allow, dropout_p=p if training else 0)``.
    q [B, H, Lq, Dh], k, v [B, H, L, Dh], allow [B, 1 or H, Lq, L] bool -> [B, H, Lq, Dh].

    With dropout on the CPU, SDPA runs its math path anyway (scores, masked softmax, Bernoulli dropout, @ v):
    the same path is written out here so the probabilities' dropout takes the cheap draws."""
    if not training or p == 0.0 or q.device.type != "cpu" or USE_TORCH_DROPOUT:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allow, dropout_p=p if training else 0.0)
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # [B, H, Lq, L]
    a = torch.softmax(s.masked_fill(~allow, float("-inf")), dim=-1)
    return dropout(a, p, True) @ v
