"""STOSA (Fan et al., WWW 2022, "Sequential Recommendation via Stochastic Self-Attention", arXiv 2201.06035).

Every item is a diagonal Gaussian: a mean table and a covariance table (the covariance through ELU + 1, so it
is positive), each with its own position table. Self-attention weights are negative squared 2-Wasserstein
distances between the query and key Gaussians, the mean context is P V_mu and the covariance context
P^2 V_Sigma (a weighted sum of independent Gaussians scales its variance by the squared weights). Training is
BPR on distances, -log sigmoid(d(u, neg) - d(u, pos)), plus the positive-vs-negative hinge
max(0, d(u, pos) - d(pos, neg)) weighted by ``pvn_weight``; items are ranked by the smallest distance.
Component names below follow the paper's Section 4 (stochastic embeddings, Wasserstein self-attention, FFN,
prediction, loss with the positive-negative regulariser); architecture details follow the official code
(zfan20/STOSA ``DistSAModel``), which the published numbers come from.

Distances. For diagonal Gaussians N(mu1, diag(c1)) and N(mu2, diag(c2)),
W2^2 = ||mu1 - mu2||^2 + ||sqrt(c1) - sqrt(c2)||^2, i.e. the squared Euclidean distance between the stacked
vectors g = [mu; sqrt(c)] (``gaussian_vectors``). The library scores every model as a dot product
``user_embeddings @ item_embeddings().T``, so both sides are augmented (``augment_users`` / ``augment_items``):

    user [2 g_u; -1] . item [g_i; ||g_i||^2] = -W2^2(u, i) + ||g_u||^2,

the last term is constant per user, so the ranking (and a softmax over items) is exactly that of -W2^2.
Vectors are 2D + 1 wide.

The official code's quirk (``mean_stream``): in ``DistSAEncoder.forward`` each layer's mean output is assigned
to a misspelt variable (``maen_hidden_states``) and dropped, so every layer sees, and the encoder returns, the
*input* mean embedding ELU(LN(item_mean + pos_mean)); only the covariance stream is updated (its attention
weights still use the mean queries / keys). ``mean_stream="official"`` (default: the published numbers, and
DiffuRec's copy of STOSA, come from it) reproduces that; the mean value / output / FFN weights then exist (same
parameter count) but get no gradient. ``"fixed"`` passes the mean through the layers as the paper describes.

Other choices, documented:
- Causal: like the official model (triangular mask), one pass gives a loss at every position of a window.
  Positions are right-aligned (the official left-pads windows of max_len and counts from the left, the same
  positions when L = max_len), padding keys are masked and the diagonal is always allowed, so dropping
  all-padding leading columns changes nothing (``padding_free``) and an empty history stays finite.
- Negatives: one per position, uniform over the catalogue and redrawn (a few rounds) when they hit an item of
  the row's window. The official draws uniformly excluding the user's whole training history, which a batch
  does not carry.
- -log sigmoid is computed as -logsigmoid (the official adds 1e-24 inside the sigmoid, which does not stop
  log(0) = -inf when the margin is very negative); same value wherever the official's is finite.
- ``loss="softmax"`` (ours, not the official): full-softmax CE on -W2^2 over every item through the library's
  L_TOWER (``train.loss`` full or sampled applies only then).
- Init as the official: every Linear / Embedding weight N(0.01, 0.02) (mean 0.01, padding row included), biases
  0, LayerNorm eps 1e-12. The official's ``user_margins`` table (unused by its BPR loss) is left out; so is the
  KL-distance option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.config import ConfigError, at_least, check_attention_sizes, check_fields, choice
from t2diff.losses import Objective
from t2diff.models.base import CausalEncoder, DataInfo
from t2diff.models.dropout import Dropout
from t2diff.models.layers import attention_mask

MEAN_STREAMS = ("official", "fixed")  # official: the encoder returns the input mean (the code's typo)
LOSSES = ("bpr", "softmax")  # bpr + pvn hinge with one uniform negative per position (official) | full softmax
_EPS_COV = 1e-24  # variances are clamped here before the square root, as the official


@dataclass
class STOSAConfig:
    """Defaults = the official code's argparse defaults (hidden 64, 2 layers, 2 heads, dropout 0.5 for hidden
    states and attention, FFN 4 x hidden with ELU, pvn_weight 0.1, init N(0.01, 0.02)). The README's Beauty
    command (the paper's setting) is hidden 64, 1 layer, 4 heads, dropout 0.3, attention dropout 0.0,
    pvn_weight 0.005 (configs/ml-1m/stosa.yaml uses it)."""

    hidden: int = at_least(64)  # D, per stream (mean and covariance)
    num_blocks: int = at_least(2)
    num_heads: int = at_least(2)
    ffn_dim: int | None = None  # inner width of each stream's FFN; None = 4 x hidden (official)
    dropout: float = 0.5  # hidden_dropout_prob: embeddings, attention output, FFN output
    attn_dropout: float = 0.5  # attention_probs_dropout_prob
    pvn_weight: float = 0.1  # weight of max(0, d(u, pos) - d(pos, neg))
    mean_stream: str = choice("official", MEAN_STREAMS)
    loss: str = choice("bpr", LOSSES)
    negative_rounds: int = at_least(3, 0)  # redraws of negatives that hit the row's window (0: plain uniform)
    init_mean: float = 0.01  # official init N(0.01, 0.02)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate_config("model")

    def validate_config(self, where: str) -> None:
        check_fields(self, where)
        check_attention_sizes(self, where, ("dropout", "attn_dropout"))
        if not self.pvn_weight >= 0.0:
            raise ConfigError(f"{where}.pvn_weight: must be >= 0, got {self.pvn_weight}")
        if not self.init_std > 0.0:
            raise ConfigError(f"{where}.init_std: must be > 0, got {self.init_std}")


# ---------------------------------------------------------------- distances and the dot-product form
def gaussian_vectors(mean: Tensor, cov: Tensor) -> Tensor:  # [..., D], [..., D] -> [..., 2D]
    """g = [mu; sqrt(Sigma)]: W2^2 between diagonal Gaussians is ||g1 - g2||^2."""
    return torch.cat([mean, cov.clamp_min(_EPS_COV).sqrt()], dim=-1)


def w2_sq(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:  # [..., D] x4 -> [...]
    """Squared 2-Wasserstein distance between diagonal Gaussians, row by row (broadcasting)."""
    return (gaussian_vectors(mean1, cov1) - gaussian_vectors(mean2, cov2)).pow(2).sum(-1)


def w2_sq_pairwise(g1: Tensor, g2: Tensor) -> Tensor:  # [..., N, 2D], [..., M, 2D] -> [..., N, M]
    """All-pairs W2^2 from stacked vectors via ||a||^2 + ||b||^2 - 2 a.b (one matmul, as attention needs)."""
    return g1.pow(2).sum(-1, keepdim=True) + g2.pow(2).sum(-1).unsqueeze(-2) - 2.0 * g1 @ g2.transpose(-1, -2)


def augment_users(mean: Tensor, cov: Tensor) -> Tensor:  # [..., D], [..., D] -> [..., 2D + 1]
    """[2 mu; 2 sqrt(Sigma); -1]: dotted with ``augment_items`` gives -W2^2 + a per-user constant."""
    g = gaussian_vectors(mean, cov)
    return torch.cat([2.0 * g, -torch.ones_like(g[..., :1])], dim=-1)


def augment_items(mean: Tensor, cov: Tensor) -> Tensor:  # [..., D], [..., D] -> [..., 2D + 1]
    """[mu; sqrt(Sigma); ||mu||^2 + ||sqrt(Sigma)||^2]."""
    g = gaussian_vectors(mean, cov)
    return torch.cat([g, g.pow(2).sum(-1, keepdim=True)], dim=-1)


def _positive(x: Tensor) -> Tensor:
    """ELU + 1 > 0: how the official turns any projection into diagonal variances."""
    return F.elu(x) + 1.0


# ---------------------------------------------------------------- layers
class _FFN(nn.Module):
    """Position-wise FFN of one stream: Linear -> ELU -> Linear -> dropout -> LayerNorm(+ residual)."""

    def __init__(self, dim: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, inner), nn.Linear(inner, dim)
        self.drop = Dropout(dropout)
        self.ln = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, L, D]
        return self.ln(x + self.drop(self.fc2(F.elu(self.fc1(x)))))


class WassersteinLayer(nn.Module):
    """One STOSA block: Wasserstein self-attention over both streams, then one FFN per stream."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        # separate projections per stream, as the official (Q/K/V of the covariance stream pass ELU + 1)
        self.mean_q, self.mean_k, self.mean_v = (nn.Linear(dim, dim) for _ in range(3))
        self.cov_q, self.cov_k, self.cov_v = (nn.Linear(dim, dim) for _ in range(3))
        self.mean_out, self.cov_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim, eps=1e-12)  # one LayerNorm for both streams' attention outputs (official)
        self.drop = Dropout(dropout)
        self.attn_drop = Dropout(attn_dropout)
        self.mean_ffn = _FFN(dim, ffn_dim, dropout)
        self.cov_ffn = _FFN(dim, ffn_dim, dropout)

    def _split(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, Dh]
        b, l, _ = x.shape
        return x.view(b, l, self.heads, self.dh).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:  # [B, H, L, Dh] -> [B, L, D]
        b, _, l, _ = x.shape
        return x.transpose(1, 2).reshape(b, l, self.heads * self.dh)

    def forward(self, mean: Tensor, cov: Tensor, allow: Tensor, update_mean: bool) -> tuple[Tensor | None, Tensor]:
        """mean, cov [B, L, D] (cov > 0); allow [B, 1, L, L] bool. Returns (new mean [B, L, D] or None when
        ``update_mean`` is off: the official drops it anyway, so it is not computed; new cov [B, L, D] > 0)."""
        q = gaussian_vectors(self._split(self.mean_q(mean)), self._split(_positive(self.cov_q(cov))))  # [B,H,L,2Dh]
        k = gaussian_vectors(self._split(self.mean_k(mean)), self._split(_positive(self.cov_k(cov))))
        scores = -w2_sq_pairwise(q, k) / math.sqrt(self.dh)  # [B, H, L, L]: closer keys weigh more
        p = self.attn_drop(torch.softmax(scores.masked_fill(~allow, float("-inf")), dim=-1))
        cov_ctx = (p * p) @ self._split(_positive(self.cov_v(cov)))  # Var(sum_j p_j x_j) = sum_j p_j^2 Var(x_j)
        cov_h = self.ln(cov + self.drop(self.cov_out(self._merge(cov_ctx))))
        new_cov = _positive(self.cov_ffn(cov_h))
        if not update_mean:
            return None, new_cov
        mean_ctx = p @ self._split(self.mean_v(mean))  # [B, H, L, Dh]
        mean_h = self.ln(mean + self.drop(self.mean_out(self._merge(mean_ctx))))
        return self.mean_ffn(mean_h), new_cov


# ---------------------------------------------------------------- the model
class STOSA(CausalEncoder, config=STOSAConfig, paper_row="STOSA"):
    padding_free = True  # right-aligned positions, padding keys masked, diagonal allowed

    def __init__(self, cfg: STOSAConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        cfg.validate_config("model")  # a config edited after construction
        if cfg.loss == "bpr" and objective is not None and objective.loss != "full":
            raise ConfigError(f"train.loss={objective.loss!r} sets the softmax L_TOWER, which model.loss='bpr' "
                              "does not use (it samples its own negatives); set model.loss=softmax or train.loss=full")
        d, n = cfg.hidden, info.num_items + 1
        self.item_mean = nn.Embedding(n, d, padding_idx=0)
        self.item_cov = nn.Embedding(n, d, padding_idx=0)  # pre-activation: Sigma = ELU(.) + 1
        self.pos_mean = nn.Embedding(info.max_len, d)
        self.pos_cov = nn.Embedding(info.max_len, d)
        self.ln_in = nn.LayerNorm(d, eps=1e-12)  # shared by both input streams (official)
        self.drop_in = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            WassersteinLayer(d, cfg.num_heads, cfg.ffn_dim or 4 * d, cfg.dropout, cfg.attn_dropout)
            for _ in range(cfg.num_blocks)
        )
        for m in self.modules():  # official init: N(0.01, 0.02) for every Linear / Embedding weight
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=cfg.init_mean, std=cfg.init_std)  # the padding row too
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    # ---- encoder
    def input_gaussians(self, seq: Tensor) -> tuple[Tensor, Tensor]:  # seq [B, L] -> mean, cov [B, L, D]
        """Stochastic embeddings: mean = ELU(dropout(LN(E_mu + P_mu))),
        cov = ELU(dropout(LN(E_Sigma + P_Sigma))) + 1 (one LayerNorm for both)."""
        l = seq.shape[1]
        pos = torch.arange(self.info.max_len - l, self.info.max_len, device=seq.device)  # right-aligned
        mean = F.elu(self.drop_in(self.ln_in(self.item_mean(seq) + self.pos_mean(pos))))
        cov = _positive(self.drop_in(self.ln_in(self.item_cov(seq) + self.pos_cov(pos))))
        return mean, cov

    def gaussians(self, seq: Tensor) -> tuple[Tensor, Tensor]:  # seq [B, L] -> mean, cov [B, L, D]
        """The sequence Gaussian at every position (causal)."""
        mean, cov = self.input_gaussians(seq)
        allow = attention_mask(seq, causal=True)  # [B, 1, L, L]
        fixed = self.cfg.mean_stream == "fixed"
        for layer in self.layers:
            new_mean, cov = layer(mean, cov, allow, update_mean=fixed)
            if new_mean is not None:
                mean = new_mean  # official: never reached, every layer and the output keep the input mean
        return mean, cov

    def encode(self, seq: Tensor) -> Tensor:  # seq [B, L] -> [B, L, 2D + 1] augmented user vectors
        return augment_users(*self.gaussians(seq))

    # ---- item side
    def item_gaussians(self, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:  # -> mean, cov [..., D]
        """Item Gaussians: the raw mean row and ELU(cov row) + 1 (no position, no LayerNorm: official)."""
        if ids is None:
            return self.item_mean.weight, _positive(self.item_cov.weight)
        return self.item_mean(ids), _positive(self.item_cov(ids))

    def item_embeddings(self) -> Tensor:  # [I + 1, 2D + 1]
        return augment_items(*self.item_gaussians())

    # ---- training
    def sample_negatives(self, batch: Batch) -> Tensor:  # -> [B, L] ids in 1..I
        """One uniform negative per position, redrawn up to ``negative_rounds`` times where it is an item of
        the row's window (its history or a target)."""
        seq = batch.seq
        neg = torch.randint(1, self.info.num_items + 1, seq.shape, device=seq.device)
        window = torch.cat([seq, batch.pos_targets], dim=1)  # [B, 2L]
        for _ in range(self.cfg.negative_rounds):
            hit = (neg.unsqueeze(-1) == window.unsqueeze(1)).any(-1)  # [B, L]
            if not bool(hit.any()):
                break
            neg = torch.where(hit, torch.randint_like(neg, 1, self.info.num_items + 1), neg)
        return neg

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        keep = batch.pos_targets > 0  # [B, L]
        if not bool(keep.any()):
            raise ValueError("batch has no targets (pos_targets are all 0)")
        mean, cov = self.gaussians(batch.seq)  # [B, L, D] each
        if self.cfg.loss == "softmax":  # ours: CE over every item on -W2^2 (row constants cancel in softmax)
            loss = self.tower_loss(augment_users(mean[keep], cov[keep]), batch.pos_targets[keep])
            return loss, {"tower": loss.item()}
        neg_ids = self.sample_negatives(batch)[keep]  # [N]
        u_mean, u_cov = mean[keep], cov[keep]  # [N, D]
        p_mean, p_cov = self.item_gaussians(batch.pos_targets[keep])
        n_mean, n_cov = self.item_gaussians(neg_ids)
        d_pos = w2_sq(u_mean, u_cov, p_mean, p_cov)  # [N]
        d_neg = w2_sq(u_mean, u_cov, n_mean, n_cov)
        d_pn = w2_sq(p_mean, p_cov, n_mean, n_cov)  # positive vs negative item
        bpr = -F.logsigmoid(d_neg - d_pos).mean()
        pvn = F.relu(d_pos - d_pn).mean()  # the positive should be closer to the user than to the negative
        loss = bpr + self.cfg.pvn_weight * pvn
        return loss, {"bpr": bpr.item(), "pvn": pvn.item()}
