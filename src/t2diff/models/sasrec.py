"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the behaviour sequence.

Trained on whole windows with a full-softmax loss at every position (DESIGN §6): one encoding per window
covers every next-item target in it, instead of re-encoding every prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.losses import Objective
from t2diff.models.base import CausalEncoder, DataInfo
from t2diff.models.dropout import Dropout
from t2diff.models.layers import TransformerBlock, TransformerConfig, attention_mask


@dataclass
class SASRecConfig(TransformerConfig):
    """hidden 64, 2 blocks, 1 head, FFN 256, dropout 0.2 (TransformerConfig's defaults)."""


class SASRec(CausalEncoder, config=SASRecConfig, paper_row="SASRec"):
    padding_free = True  # right-aligned positions, padding masked out

    def __init__(self, cfg: SASRecConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        d = cfg.hidden
        self.item_emb = nn.Embedding(info.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(info.max_len, d)
        self.emb_drop = Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.num_blocks)
        )
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: Tensor, last_only: bool = False) -> Tensor:  # seq [B, L] -> [B, L, D] ([B, 1, D])
        l = seq.shape[1]
        pos = torch.arange(self.info.max_len - l, self.info.max_len, device=seq.device)  # right-aligned
        x = self.emb_drop(self.item_emb(seq) + self.pos_emb(pos))
        x = x * (seq > 0).unsqueeze(-1)
        allow = attention_mask(seq, causal=True)
        for i, blk in enumerate(self.blocks):
            x = blk(x, allow, last_only=last_only and i == len(self.blocks) - 1)
        return self.ln(x)

    def user_embeddings(self, batch: Batch) -> Tensor:
        return self.encode(batch.seq, last_only=True)[:, -1]  # [B, D]: only the position that is ranked
