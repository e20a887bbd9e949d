"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained with the Cloze objective.

Training window: the example's history shifted by one with the target appended, ``seq[1:] + [target]``
[B, L], so every item of the user's window, the target included, can be a Cloze target. A fraction
``mask_prob`` of its real (non-padding) items is replaced by the [MASK] token (id ``num_items + 1``; the
input table has ``num_items + 2`` rows) and predicted from both sides; padding is never masked, and every
non-empty row gets at least one masked item. With probability ``last_mask_prob`` a row masks only its last
item instead: the paper's extra samples that match the prediction task (§3.6).

Prediction (paper §3.6): append [MASK] after the history (dropping the oldest item to keep length L); its
output is the user embedding.

Output layer (eq. 7): GELU(h W^P + b^P) scored against the shared input item embeddings; the output bias
b^O is dropped so scores stay plain dot products (``user @ item.T``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.models.dropout import Dropout
from t2diff.models.layers import TransformerBlock, TransformerConfig, attention_mask


@dataclass
class BERT4RecConfig(TransformerConfig):
    """Defaults: 2 blocks, 2 heads, hidden 64, FFN 256, dropout 0.2, mask ratio 0.2 are RecBole 1.2's
    BERT4Rec.yaml (the paper: hidden 64, 2 layers, 2 heads, mask proportion 0.2 on ML-1M).
    last_mask_prob = 0.1 is ours: the paper adds last-item-only samples without giving a ratio (RecBole's
    ft_ratio uses 0.5)."""

    num_heads: int = 2
    mask_prob: float = 0.2  # fraction of real items replaced by [MASK] in a training window
    last_mask_prob: float = 0.1  # fraction of training rows that mask only their last item (the target)


class BERT4Rec(SeqRecModel, config=BERT4RecConfig, paper_row="Bert4Rec"):
    padding_free = True  # right-aligned positions, padding masked out

    def __init__(self, cfg: BERT4RecConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        d = cfg.hidden
        self.mask_id = info.num_items + 1
        self.item_emb = nn.Embedding(info.num_items + 2, d, padding_idx=0)  # last row: [MASK]
        self.pos_emb = nn.Embedding(info.max_len, d)
        self.emb_drop = Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.num_blocks)
        )
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, d)  # W^P of eq. 7
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: Tensor, last_only: bool = False) -> Tensor:
        """seq [B, L] (may hold [MASK]) -> [B, L, D], bidirectional; ``last_only``: the last block computes only
        the last position ([B, 1, D])."""
        l = seq.shape[1]
        pos = torch.arange(self.info.max_len - l, self.info.max_len, device=seq.device)  # right-aligned
        x = self.emb_drop(self.item_emb(seq) + self.pos_emb(pos))
        x = x * (seq > 0).unsqueeze(-1)
        allow = attention_mask(seq, causal=False)  # [MASK] > 0, so it is attended like an item
        for i, blk in enumerate(self.blocks):
            x = blk(x, allow, last_only=last_only and i == len(self.blocks) - 1)
        return F.gelu(self.head(self.ln(x)))  # eq. 7 without the output bias

    def window(self, batch: Batch) -> Tensor:  # [B, L]: seq[1:] + [target]; a row without target keeps seq
        shifted = torch.cat([batch.seq[:, 1:], batch.target[:, None]], dim=1)
        return torch.where((batch.target > 0)[:, None], shifted, batch.seq)

    def cloze(self, window: Tensor) -> tuple[Tensor, Tensor]:
        """Mask a training window [B, L] -> (inputs [B, L] with [MASK] ids, labels [B, L]: the masked item, 0
        elsewhere). Only real items are masked; each row with at least one item masks at least one."""
        valid = window > 0  # [B, L]
        masked = (torch.rand(window.shape, device=window.device) < self.cfg.mask_prob) & valid
        last_only = torch.rand(window.shape[0], device=window.device) < self.cfg.last_mask_prob  # [B]
        last = torch.zeros_like(valid)
        last[:, -1] = True
        masked = torch.where(last_only[:, None], last & valid, masked)
        # rows left without a masked item: mask one of their real items uniformly at random
        need = valid.any(1) & ~masked.any(1)  # [B]
        pick = torch.rand(window.shape, device=window.device).masked_fill(~valid, -1.0).argmax(1)  # [B]
        masked[need, pick[need]] = True
        return window.masked_fill(masked, self.mask_id), window * masked

    def user_embeddings(self, batch: Batch) -> Tensor:
        mask = torch.full_like(batch.seq[:, :1], self.mask_id)
        seq = torch.cat([batch.seq[:, 1:], mask], dim=1)  # [B, L]: history, then the slot to predict
        return self.encode(seq, last_only=True)[:, -1]  # [B, D]: only the slot that is ranked

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight[: self.info.num_items + 1]  # [I+1, D]; never the [MASK] row

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        inputs, labels = self.cloze(self.window(batch))  # [B, L] each
        h = self.encode(inputs)  # [B, L, D]
        keep = labels > 0  # [B, L]
        loss = self.tower_loss(h[keep], labels[keep])
        return loss, {"tower": loss.item(), "masked": float(keep.sum())}
