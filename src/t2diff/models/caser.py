"""Caser (Tang & Wang, WSDM 2018): convolutional sequence embedding of the last ``window`` behaviours.

The ``window`` x d embedding matrix of the most recent items is read by horizontal filters of heights
1..window (union-level / skip patterns, max-pooled over time) and by vertical filters (weighted sums of the
rows, point-level patterns). Their concatenation goes through a fully connected layer to z [B, d].

Deviations from the paper, for one protocol across all baselines:
- Trained with the shared softmax tower loss on ``batch.target`` (the paper: negative-sampled BCE over the
  next T items); RecBole's Caser defaults to the same CE loss.
- The output bias b' of eq. 9 is dropped: scores must be plain dot products (``user @ item.T``).
- The user embedding P_u is off by default: under the ``paper`` protocol test users are unseen.
  With ``use_user`` the user vector is [z; P_u] (eq. 9) and the output item table is 2d wide to match;
  user id 0 (unknown / cold) maps to a zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.models.dropout import Dropout


@dataclass
class CaserConfig:
    """Defaults: hidden d = 64, nv = 8, nh = 16, dropout 0.4 are RecBole 1.2's Caser.yaml (the paper uses
    d = 50, nv = 4, nh = 16, dropout 0.5); window = 5 is the paper's Markov order L for MovieLens (RecBole
    uses the whole history as the window, which makes heights 1..50 and is far slower)."""

    hidden: int = 64  # d: item / user embedding size
    window: int = 5  # L: how many of the most recent behaviours the convolutions read
    num_vertical: int = 8  # nv
    num_horizontal: int = 16  # nh, per filter height
    dropout: float = 0.4  # on the concatenated convolution outputs (as in the paper's code)
    use_user: bool = False  # add the user embedding P_u (eq. 9); off: test users may be unseen


class Caser(SeqRecModel, config=CaserConfig, paper_row="Caser"):

    def __init__(self, cfg: CaserConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        d, w = cfg.hidden, cfg.window
        if w < 1:
            raise ValueError(f"caser: window must be >= 1, got {w}")
        self.item_emb = nn.Embedding(info.num_items + 1, d, padding_idx=0)
        self.conv_v = nn.Conv2d(1, cfg.num_vertical, kernel_size=(w, 1))
        self.conv_h = nn.ModuleList(
            nn.Conv2d(1, cfg.num_horizontal, kernel_size=(h, d)) for h in range(1, w + 1)
        )
        self.drop = Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.num_vertical * d + cfg.num_horizontal * w, d)
        self.user_emb = nn.Embedding(info.num_users + 1, d, padding_idx=0) if cfg.use_user else None
        self.out_dim = 2 * d if cfg.use_user else d
        # separate output item vectors (W' of eq. 9), as in the paper
        self.out_emb = nn.Embedding(info.num_items + 1, self.out_dim, padding_idx=0)
        for emb in (self.item_emb, self.out_emb, self.user_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=emb.embedding_dim**-0.5)
                with torch.no_grad():
                    emb.weight[0].zero_()

    def user_embeddings(self, batch: Batch) -> Tensor:  # [B, out_dim]
        w = self.cfg.window
        seq = batch.seq[:, -w:]
        if seq.shape[1] < w:  # shorter windows than L: left-pad, padding embeds to 0
            seq = F.pad(seq, (w - seq.shape[1], 0))
        e = self.item_emb(seq).unsqueeze(1)  # [B, 1, w, d]
        o_v = self.conv_v(e).flatten(1)  # [B, nv * d]; vertical filters have no activation (paper)
        # each height h: [B, nh, w - h + 1, 1] -> ReLU -> max over time -> [B, nh]
        o_h = [F.relu(conv(e)).squeeze(3).amax(dim=2) for conv in self.conv_h]
        z = F.relu(self.fc(self.drop(torch.cat([o_v, *o_h], dim=1))))  # [B, d] (eq. 7)
        if self.user_emb is not None:
            z = torch.cat([z, self.user_emb(batch.user)], dim=1)  # [B, 2d] (eq. 9)
        return z

    def item_embeddings(self) -> Tensor:
        return self.out_emb.weight  # [I+1, out_dim]

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        keep = batch.target > 0  # [B]
        u = self.user_embeddings(batch)  # [B, out_dim]
        loss = self.tower_loss(u[keep], batch.target[keep])
        return loss, {"tower": loss.item()}
