"""Building blocks shared by the Transformer-based models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention block with a point-wise feed-forward network (SASRec style)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_drop = dropout

    def forward(self, x: Tensor, allow: Tensor) -> Tensor:
        """x [B, L, D]; allow [B, 1, L, L] bool, True where query i may attend to key j."""
        b, l, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allow,
                                           dropout_p=self.attn_drop if self.training else 0.0)  # [B, H, L, Dh]
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, l, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


def attention_mask(seq: Tensor, causal: bool) -> Tensor:
    """[B, 1, L, L] bool mask for left-padded ``seq`` [B, L]: keys that are padding are hidden, and with
    ``causal`` so are later positions. The diagonal is always allowed so no row is fully masked (NaN)."""
    l = seq.shape[1]
    valid = (seq > 0)[:, None, None, :]  # [B, 1, 1, L]
    allow = valid.expand(-1, 1, l, -1)
    if causal:
        allow = allow & torch.ones(l, l, dtype=torch.bool, device=seq.device).tril()
    return allow | torch.eye(l, dtype=torch.bool, device=seq.device)
