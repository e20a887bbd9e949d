"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the behaviour sequence.

Trained on whole windows with a full-softmax loss at every position (DESIGN §6): one encoding per window
covers every next-item target in it, instead of re-encoding every prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.config import ConfigError, check_attention_sizes, check_fields, choice
from t2diff.losses import Objective
from t2diff.models.base import CausalEncoder, DataInfo
from t2diff.models.dropout import Dropout
from t2diff.models.layers import BLOCK_LAYOUTS, TransformerBlock, TransformerConfig, attention_mask


@dataclass
class SASRecConfig(TransformerConfig):
    """hidden 64, 2 blocks, 1 head, FFN 256, dropout 0.2 (TransformerConfig's defaults).

    ``layout: kang`` with ``emb_scale: true``, ``init_std: 0.02`` and ``ffn_dim: hidden`` is the original SASRec
    as the SASRec+ reference (Klenitskiy & Vasilev, RecSys'23) builds it; the defaults are ours (pre-LN, GELU)."""

    layout: str = choice("pre_ln", BLOCK_LAYOUTS)
    emb_scale: bool = False  # multiply item embeddings by sqrt(hidden) before adding positions (Kang's code)
    init_std: float | None = None  # every Linear / Embedding weight ~ N(0, init_std), biases 0; None: ours

    def __post_init__(self) -> None:
        self.validate_config("model")

    def validate_config(self, where: str) -> None:
        check_fields(self, where)
        check_attention_sizes(self, where, ("dropout", "emb_dropout"))
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"{where}.init_std: must be > 0 (or null = ours), got {self.init_std}")


class SASRec(CausalEncoder, config=SASRecConfig, paper_row="SASRec"):
    padding_free = True  # right-aligned positions, padding masked out

    def __init__(self, cfg: SASRecConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        d = cfg.hidden
        self.item_emb = nn.Embedding(info.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(info.max_len, d)
        self.emb_drop = Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.layout) for _ in range(cfg.num_blocks)
        )
        self.ln = nn.LayerNorm(d)
        self.emb_mult = d**0.5 if cfg.emb_scale else 1.0
        if cfg.init_std is None:
            nn.init.normal_(self.item_emb.weight, std=d**-0.5)
            nn.init.normal_(self.pos_emb.weight, std=0.02)
        else:
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=cfg.init_std)
                    if isinstance(m, nn.Linear) and m.bias is not None:
                        nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: Tensor, last_only: bool = False) -> Tensor:  # seq [B, L] -> [B, L, D] ([B, 1, D])
        l = seq.shape[1]
        pos = torch.arange(self.info.max_len - l, self.info.max_len, device=seq.device)  # right-aligned
        x = self.emb_drop(self.item_emb(seq) * self.emb_mult + self.pos_emb(pos))
        x = x * (seq > 0).unsqueeze(-1)
        allow = attention_mask(seq, causal=True)
        for i, blk in enumerate(self.blocks):
            x = blk(x, allow, last_only=last_only and i == len(self.blocks) - 1)
        return self.ln(x)

    def user_embeddings(self, batch: Batch) -> Tensor:
        return self.encode(batch.seq, last_only=True)[:, -1]  # [B, D]: only the position that is ranked
