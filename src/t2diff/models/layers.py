"""Building blocks shared by the Transformer-based models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2diff.models.dropout import Dropout, attention


@dataclass
class TransformerConfig:
    """The sizes every self-attention encoder here shares (SASRec, BERT4Rec)."""

    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    ffn_dim: int = 256
    dropout: float = 0.2
    emb_dropout: float = 0.2


# Block layouts. pre_ln: x + Attn(LN(x)), then x + FFN(LN(x)) with a GELU FFN (ours). kang: the original SASRec
# (Kang & McAuley's TF code, kept by the pmixer port and the SASRec+ reference): the query is LN(x) but keys and
# values are x un-normalised, the residual adds LN(x), the FFN reads LN(x) and adds it back, and the FFN is
# ReLU with dropout after both linear maps; no dropout on the attention output.
BLOCK_LAYOUTS = ("pre_ln", "kang")


class TransformerBlock(nn.Module):
    """Self-attention block with a point-wise feed-forward network; ``layout`` in BLOCK_LAYOUTS."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, layout: str = "pre_ln") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {heads}")
        if layout not in BLOCK_LAYOUTS:
            raise ValueError(f"block layout must be one of {BLOCK_LAYOUTS}, got {layout!r}")
        self.heads, self.layout = heads, layout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        if layout == "kang":
            self.ffn = nn.Sequential(
                nn.Linear(dim, ffn_dim), Dropout(dropout), nn.ReLU(), nn.Linear(ffn_dim, dim), Dropout(dropout)
            )
            self.drop = nn.Identity()
        else:
            self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, dim))
            self.drop = Dropout(dropout)
        self.attn_drop = dropout

    def forward(self, x: Tensor, allow: Tensor, last_only: bool = False) -> Tensor:
        """x [B, L, D]; allow [B, 1, L, L] bool, True where query i may attend to key j. ``last_only``: compute
        only the last position's output ([B, 1, D]), attending to every key: what ranking needs from the last
        block, at a fraction of its cost (the keys and values still come from all positions)."""
        b, l, d = x.shape
        h, dh = self.heads, d // self.heads
        y = self.ln1(x)
        kv_in = x if self.layout == "kang" else y  # kang: keys and values from the un-normalised input
        if last_only or self.layout == "kang":
            w_q, w_kv = self.qkv.weight.split([d, 2 * d])  # rows: q, then k and v
            b_q, b_kv = self.qkv.bias.split([d, 2 * d])
            if last_only:
                y, x, allow = y[:, -1:], x[:, -1:], allow[..., -1:, :]
            lq = y.shape[1]
            q = F.linear(y, w_q, b_q).view(b, lq, h, dh).transpose(1, 2)  # [B, H, Lq, Dh]
            k, v = F.linear(kv_in, w_kv, b_kv).view(b, l, 2, h, dh).permute(2, 0, 3, 1, 4)  # [B, H, L, Dh] each
        else:
            q, k, v = self.qkv(y).view(b, l, 3, h, dh).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v, allow, self.attn_drop, self.training)  # [B, H, Lq, Dh]
        a = self.proj(a.transpose(1, 2).reshape(b, x.shape[1], d))  # [B, Lq, D]
        if self.layout == "kang":
            x = y + a  # the residual adds the normalised query (eq. of Kang & McAuley's code)
            y2 = self.ln2(x)
            return y2 + self.ffn(y2)
        x = x + self.drop(a)
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


class SideFeatures:
    """Item side features (``DataInfo.item_features`` [I+1, F] tokens, 0 = none) as an embedding table plus a
    mean-pool. A mixin for models that add them to their id embeddings: sets ``item_feats`` (a non-persistent
    buffer) and ``feat_emb`` (None when disabled or absent) so checkpoints keep stable parameter names."""

    feat_emb: nn.Embedding | None
    item_feats: Tensor

    def init_side_features(self, info, dim: int, enabled: bool) -> None:  # info: DataInfo
        self.feat_emb = None
        if not enabled or info.item_features is None:
            return
        feats = info.item_features.long()
        if feats.dim() != 2 or feats.shape[0] != info.num_items + 1:
            raise ValueError(f"item_features must be [num_items + 1, F], got {tuple(feats.shape)}")
        vocab = max(info.num_feature_tokens, int(feats.max()) + 1 if feats.numel() else 1)
        self.register_buffer("item_feats", feats, persistent=False)  # type: ignore[attr-defined]
        self.feat_emb = nn.Embedding(vocab, dim, padding_idx=0)
        nn.init.normal_(self.feat_emb.weight, std=dim**-0.5)
        with torch.no_grad():
            self.feat_emb.weight[0].zero_()

    def with_side_features(self, x: Tensor, ids: Tensor) -> Tensor:
        """x [..., D] id embeddings of ids [...] plus the mean of their feature embeddings. When ids outnumber
        the catalogue (a batch of histories: [B, L] ids), every item's mean is computed once and gathered, instead
        of pooling F embeddings per position (at L = 200 the per-position pooling was a third of a DAT step);
        each item's mean is the same arithmetic either way, so the values are identical."""
        if self.feat_emb is None:
            return x
        if ids.numel() > self.item_feats.shape[0]:
            return x + self._pool(self.item_feats, x.dtype)[ids]
        return x + self._pool(self.item_feats[ids], x.dtype)

    def _pool(self, tok: Tensor, dtype: torch.dtype) -> Tensor:  # tok [..., F] -> [..., D]
        assert self.feat_emb is not None
        m = (tok > 0).unsqueeze(-1).to(dtype)  # [..., F, 1]
        return (self.feat_emb(tok) * m).sum(-2) / m.sum(-2).clamp_min(1.0)
