"""DAT (Yu et al., DLP-KDD 2021, "A Dual Augmented Two-tower Model for Online Large-scale Recommendation"):
a plain two-tower model whose towers each take an augmented vector, learnt by the Adaptive-Mimic Mechanism
(AMM) to imitate the *other* tower's output on positive pairs, a cheap stand-in for cross-tower interaction.

- User tower: mean of the history's item input vectors (+ optional user id embedding) concatenated with
  the augmented vector a_u, MLP -> e_u.
- Item tower: item input vector (id embedding + mean side-feature embedding where the data has them)
  concatenated with the augmented vector a_i, MLP -> e_i. The history and the item tower share the item
  input vectors.
- AMM (paper eq. for loss_u / loss_v, positives only): loss_u = ||a_u - sg(e_i)||^2,
  loss_i = ||a_i - sg(e_u)||^2 (squared L2 per pair, mean over the batch), added with ``mimic_weight``.
- Scores: with ``l2_norm`` the tower outputs are L2-normalised and the user side is divided by
  ``temperature`` (cosine similarity / tau, the common two-tower recipe); the AMM targets are the
  normalised vectors.

Deviations, documented:
- a_u: the paper learns one free vector per user, which cannot generalise to users unseen in training
  (the ``paper`` protocol's test users). Here a_u = W_a sg(mean history) + b_a, a linear function of the
  pooled history. The stop-gradient keeps the mimic loss from moving the shared item table, just as the
  paper's mimic loss only updates the augmented vectors; W_a also receives the main loss through the tower.
  a_i stays a free vector per item id.
- The "+" of DAT+ (the Category Alignment Loss) is not implemented: DESIGN §2 defines the baseline as AMM
  on a plain two tower, and our datasets carry multi-label side features, not a single category per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.models.dropout import Dropout
from t2diff.models.layers import SideFeatures


@dataclass
class DATConfig:
    """Defaults (ours, sized like the other baselines: vectors of 64): item input embedding 64, towers
    MLP (input -> 128 -> 64), mimic weight 0.5 per side (TorchEasyRec's DAT amm_u_weight / amm_i_weight),
    L2-normalised outputs with temperature 0.1. The paper's own sizes are industrial (many features)."""

    embedding: int = 64  # item id / side-feature / user id embedding size E
    out_dim: int = 64  # tower output = augmented vector size D
    mlp_hidden: list[int] = field(default_factory=lambda: [128])  # hidden widths of each tower's MLP
    dropout: float = 0.1  # inside the tower MLPs
    mimic_weight: float = 0.5  # weight of loss_u and of loss_i
    l2_norm: bool = True  # cosine scores
    temperature: float = 0.1  # only with l2_norm: user vectors are divided by it
    use_user: bool = False  # user id embedding in the user tower (0 = unknown maps to a zero vector)
    use_item_features: bool = True  # side features in the item input vectors, where the data has them


def _mlp(dims: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.ReLU(), Dropout(dropout)]
    return nn.Sequential(*layers)


class DAT(SideFeatures, SeqRecModel, config=DATConfig, paper_row="DAT+"):

    def __init__(self, cfg: DATConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        e, d = cfg.embedding, cfg.out_dim
        self.item_emb = nn.Embedding(info.num_items + 1, e, padding_idx=0)
        self.init_side_features(info, e, cfg.use_item_features)
        self.user_emb = nn.Embedding(info.num_users + 1, e, padding_idx=0) if cfg.use_user else None
        self.aug_user = nn.Linear(e, d)  # a_u from the pooled history (see the module docstring)
        self.aug_item = nn.Embedding(info.num_items + 1, d)  # a_i, one per item
        u_in = e * (2 if cfg.use_user else 1) + d
        self.user_mlp = _mlp([u_in, *cfg.mlp_hidden, d], cfg.dropout)
        self.item_mlp = _mlp([e + d, *cfg.mlp_hidden, d], cfg.dropout)
        for emb in (self.item_emb, self.feat_emb, self.user_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=e**-0.5)
                with torch.no_grad():
                    emb.weight[0].zero_()
        nn.init.normal_(self.aug_item.weight, std=d**-0.5)

    def item_inputs(self, ids: Tensor) -> Tensor:
        """Item input vectors of ids [...] -> [..., E]: id embedding + mean of side-feature embeddings."""
        x = self.with_side_features(self.item_emb(ids), ids)
        return x * (ids > 0).unsqueeze(-1).to(x.dtype)  # padding stays exactly 0

    def _norm(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.cfg.l2_norm else x

    def user_tower(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(e_u [B, D] before the temperature, a_u [B, D])."""
        valid = (batch.seq > 0).unsqueeze(-1).float()  # [B, L, 1]
        h = (self.item_inputs(batch.seq) * valid).sum(1) / valid.sum(1).clamp_min(1.0)  # [B, E]; empty -> 0
        a_u = self.aug_user(h.detach())  # [B, D]
        parts = [h, self.user_emb(batch.user)] if self.user_emb is not None else [h]
        e_u = self._norm(self.user_mlp(torch.cat([*parts, a_u], dim=-1)))  # [B, D]
        return e_u, a_u

    def item_tower(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(e_i [N, D], a_i [N, D]) for item ids [N]."""
        a_i = self.aug_item(ids)  # [N, D]
        return self._norm(self.item_mlp(torch.cat([self.item_inputs(ids), a_i], dim=-1))), a_i

    def _scale(self, e_u: Tensor) -> Tensor:
        return e_u / self.cfg.temperature if self.cfg.l2_norm else e_u

    def user_embeddings(self, batch: Batch) -> Tensor:
        return self._scale(self.user_tower(batch)[0])  # [B, D]

    def item_embeddings(self) -> Tensor:  # [I+1, D], the item tower on every item in one pass
        ids = torch.arange(self.info.num_items + 1, device=self.item_emb.weight.device)
        return self.item_tower(ids)[0]

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        keep = batch.target > 0  # [B]
        e_u, a_u = self.user_tower(batch)  # [B, D] each
        e_u, a_u, tgt = e_u[keep], a_u[keep], batch.target[keep]
        tower = self.tower_loss(self._scale(e_u), tgt)
        e_i, a_i = self.item_tower(tgt)  # [N, D] each: the positives only, not the whole catalogue
        mimic_u = (a_u - e_i.detach()).pow(2).sum(-1).mean()  # a_u imitates its positive item's e_i
        mimic_i = (a_i - e_u.detach()).pow(2).sum(-1).mean()  # a_i imitates the user who chose it
        loss = tower + self.cfg.mimic_weight * (mimic_u + mimic_i)
        return loss, {"tower": tower.item(), "mimic_u": mimic_u.item(), "mimic_i": mimic_i.item()}
