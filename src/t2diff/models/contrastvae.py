"""ContrastVAE (Wang et al., CIKM 2022, arXiv 2209.00456): a Transformer VAE with a latent Gaussian per position
and InfoNCE between two latent views of the same user.

Model, as the official code (YuWang-1024/ContrastVAE) builds it:

- embeddings: item + learned position -> LayerNorm (eps 1e-12) -> dropout;
- two causal Transformer encoders (post-LayerNorm, BERT / S3Rec-style blocks, GELU FFN) read the same
  embeddings and give mu [B, L, D] and log sigma^2 [B, L, D]: the latent is a sequence, one Gaussian per position;
- a third causal stack of the same shape decodes z [B, L, D]; its output at position j, dotted with the (tied)
  item table, scores the item after j. Being causal everywhere, one pass trains every position (CausalEncoder).

Loss (per optimizer step t): rec(view 1) [+ rec(view 2)] + beta(t) * (KL1 [+ KL2]) [+ w * InfoNCE] [+ priorKL]:

- rec: per-position BCE with one negative drawn uniformly (``loss: bce``, the official), averaged over
  the positions that have a target; ``loss: softmax`` uses the library's full-softmax CE (``tower_loss``) instead;
- KL: mean over batch AND positions (padding included, as the official) of -1/2 sum_d (1 + lv - mu^2 - e^lv);
- beta(t) = min(anneal_cap, t / total_annealing_steps), t a step counter kept in a buffer (``anneal_step``) so it
  survives checkpoints and --resume;
- InfoNCE: NT-Xent (2B x 2B cosine logits / temperature) between the two views' z summed over positions
  (padding included, as the official);
- priorKL (variational-dropout variants): Molchanov et al.'s approximation on the learned noise scale alpha.

Variants (``variant``), official flag in brackets. In the official contrastive variants view 1 is the
deterministic z1 = mu1 + sigma1 (no noise) and view 2 is the augmented one; the encoders run once per view
(two dropout masks):

- ``avae`` [no flag]: the plain attentive VAE, z = mu + sigma * eps, no InfoNCE;
- ``vae_cl`` [ours]: two sampled views z_k = mu_k + sigma_k * eps_k + InfoNCE;
- ``ma`` [--latent_contrastive_learning, "model augmentation"]: z2 = mu2 + Dropout(sigma2);
- ``da`` [--latent_data_augmentation]: view 2 encodes an augmented history (crop / mask / reorder, see the
  dice below) and z2 = mu2 + Dropout(sigma2); both views are decoded under the ORIGINAL history's mask and
  reconstruct its targets, as the official;
- ``vd`` [--variational_dropout, "variational augmentation"]: z2 = mu2 + sigma2 * alpha * eps with one learned
  alpha = sigmoid(logit), initialised from p = 0.2, plus priorKL(alpha);
- ``vd_da`` [--VAandDA]: ``vd`` with view 2 read from the augmented history (unreachable in the official code:
  its VD branch is tested first, and without --variational_dropout the model class lacks that branch).

Default ``vd``: the variational augmentation is the paper's own proposal and the README runs it on three of the
four data sets (Office, Tools, Toys; Beauty uses ``ma``). No ML-1M / KuaiRand setting exists anywhere; which
variant T2Diff's authors ran is unknown.

Quirks, each behind a labelled option:

- ``augmentation_dice``: the official dice ``random.sample(range(3), k=1)`` is a list, never equal to 0 or 1, so
  DA always reorders (``official``); ``fixed`` draws crop / mask / reorder uniformly per row;
- ``eval_latent``: the point the decoder reads at inference, deterministic in every mode. ``mean`` (default,
  the library's rule: no sampling at inference) is z = mu; ``mean_plus_std`` is the official (every variant
  evaluates with z = mu + sigma); ``auto`` picks the point the variant's view 1 trains on: mu + sigma for
  ma / da / vd / vd_da (their z1), mu for avae / vae_cl (sampled views, whose expectation is mu). On a tiny
  synthetic log mu vs mu + sigma made no consistent difference for vd / ma; mu was better for avae.
- history masking at evaluation (the official sets seen items' scores to 0, not -inf) belongs to the evaluator
  (``eval.mask_seen``), not here.

Deviations (all small): augmentations act on the window the batch carries (the official augments the whole
training history, then keeps its last max_len); a negative avoids the row's window items and targets (the
official: all the user's items, and it may draw the [MASK] id); a padding query attends to itself only (the
official's fully masked rows attend uniformly to every key) -- this touches only padding positions, which enter
only the KL and InfoNCE sums; fixed-dice crops are right-aligned (the official writes the crop at the start of an
all-zero list, leaving padding after the most recent item); each view re-embeds its input, so the two views draw
separate embedding-dropout masks (the official embeds once and feeds both encoders the same dropped-out input).

The KL weight depends on padding: the mean over all positions makes its pull per real position
anneal_cap x (share of real positions), about 0.011-0.023 on the official Amazon files but 0.26 on ML-1M at
max_len 50, where most windows are full. ``configs/ml-1m/contrastvae-kl-effective.yaml`` sets the cap that restores
the official effective weight (a labelled recipe change; RESULTS.md, issue 15).
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
from t2diff.models.dropout import Dropout, attention
from t2diff.models.layers import attention_mask

VARIANTS = ("avae", "vae_cl", "ma", "da", "vd", "vd_da")
AUGMENTED = ("da", "vd_da")  # view 2 reads an augmented history
VARIATIONAL = ("vd", "vd_da")  # learned alpha + priorKL
SAMPLED = ("avae", "vae_cl")  # view 1 is mu + sigma * eps (the others: mu + sigma)
# priorKL constants (Molchanov et al. 2017's fit of the log-uniform prior KL, as the official)
_C1, _C2, _C3 = 1.16145124, -1.50204118, 0.58629921


@dataclass
class ContrastVAEConfig:
    """Defaults = the official main.py (hidden 128, 1 layer, 4 heads, hidden dropout 0.3, attention dropout 0,
    latent_clr_weight 0.3, reparam dropout 0.2, anneal_cap 0.3 over 10,000 steps, temperature 0.5) and
    datasets.py (crop 0.6, mask 0.3, reorder 0.6); the variant is ``vd`` (see the module docstring)."""

    variant: str = choice("vd", VARIANTS)
    loss: str = choice("bce", ("bce", "softmax"))  # bce: one uniform negative per position (official)
    augmentation_dice: str = choice("official", ("official", "fixed"))  # official: always reorder (the bug)
    eval_latent: str = choice("mean", ("mean", "mean_plus_std", "auto"))  # decoder input at inference
    hidden: int = at_least(128)  # d of items, latents and decoder states
    num_blocks: int = at_least(1)  # blocks per stack (each encoder and the decoder)
    num_heads: int = at_least(4)
    ffn_dim: int | None = None  # None = 4 * hidden (the official Intermediate)
    dropout: float = 0.3  # hidden_dropout_prob: embeddings, attention output, FFN output
    attn_dropout: float = 0.0  # attention_probs_dropout_prob
    latent_clr_weight: float = 0.3  # w of InfoNCE
    temperature: float = 0.5  # InfoNCE
    reparam_dropout: float = 0.2  # ma / da: Dropout rate on sigma2
    vd_init_p: float = 0.2  # vd: alpha starts at sigmoid(logit(sqrt(p / (1 - p)))) = 0.5 for p = 0.2
    anneal_cap: float = 0.3  # beta(t) never exceeds this
    total_annealing_steps: int = at_least(10000)  # beta(t) = t / this until the cap
    crop_ratio: float = 0.6  # eta: fraction of the history a crop keeps
    mask_ratio: float = 0.3  # gamma: fraction of items replaced by [MASK]
    reorder_ratio: float = 0.6  # beta: length of the shuffled span, as a fraction of the history
    neg_tries: int = at_least(10)  # resamplings of a negative that hit the row's items (then kept)

    def __post_init__(self) -> None:
        self.validate_config("model")

    def validate_config(self, where: str) -> None:
        check_fields(self, where)
        check_attention_sizes(self, where, ("dropout", "attn_dropout", "reparam_dropout"))  # ffn_dim null = 4 * hidden
        for key in ("crop_ratio", "mask_ratio", "reorder_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{where}.{key}: must lie in [0, 1], got {getattr(self, key)}")
        if not 0.0 < self.vd_init_p < 0.5:  # the official clamps into (0, 0.5) silently
            raise ConfigError(f"{where}.vd_init_p: must lie in (0, 0.5), got {self.vd_init_p}")
        if not self.temperature > 0.0:
            raise ConfigError(f"{where}.temperature: must be > 0, got {self.temperature}")
        for key in ("latent_clr_weight", "anneal_cap"):
            if not getattr(self, key) >= 0.0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")


class PostLNBlock(nn.Module):
    """The official block (BERT / S3Rec style): self-attention, dropout, residual, LayerNorm; then a GELU FFN
    (4x by default), dropout, residual, LayerNorm. LayerNorm eps 1e-12 as the official's TF-style LayerNorm."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # the official's query / key / value Linears, fused
        self.proj = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.ln2 = nn.LayerNorm(dim, eps=1e-12)
        self.drop = Dropout(dropout)
        self.attn_dropout = attn_dropout

    def forward(self, x: Tensor, allow: Tensor, last_only: bool = False) -> Tensor:
        """x [B, L, D], allow [B, 1, L, L] -> [B, L, D]; ``last_only``: only the last query ([B, 1, D])."""
        b, l, d = x.shape
        h, dh = self.heads, d // self.heads
        k, v = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).view(b, l, 2, h, dh).permute(2, 0, 3, 1, 4)
        if last_only:
            x, allow = x[:, -1:], allow[..., -1:, :]
        q = F.linear(x, self.qkv.weight[:d], self.qkv.bias[:d]).view(b, -1, h, dh).transpose(1, 2)  # [B, H, Lq, Dh]
        a = attention(q, k, v, allow, self.attn_dropout, self.training)
        x = self.ln1(x + self.drop(self.proj(a.transpose(1, 2).reshape(b, x.shape[1], d))))
        return self.ln2(x + self.drop(self.ffn(x)))


class ContrastVAE(CausalEncoder, config=ContrastVAEConfig, paper_row="ContrastVAE"):
    padding_free = True  # right-aligned positions; padding keys masked, so padding columns change no real output

    @classmethod
    def paper_row(cls, cfg: ContrastVAEConfig) -> str | None:
        """The contrastive variants are the paper's ContrastVAE; avae (its ablation) and vae_cl (ours) are not."""
        return None if cfg.variant in SAMPLED else cls.PAPER_ROW

    def __init__(self, cfg: ContrastVAEConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        cfg.validate_config("model")
        d = cfg.hidden
        self.mask_id = info.num_items + 1  # [MASK] for the mask augmentation (the official item_size = I + 2)
        self.item_emb = nn.Embedding(info.num_items + 2, d, padding_idx=0)
        self.pos_emb = nn.Embedding(info.max_len, d)
        self.emb_ln = nn.LayerNorm(d, eps=1e-12)
        self.emb_drop = Dropout(cfg.dropout)

        def stack() -> nn.ModuleList:
            return nn.ModuleList(PostLNBlock(d, cfg.num_heads, cfg.ffn_dim or 4 * d, cfg.dropout, cfg.attn_dropout)
                                 for _ in range(cfg.num_blocks))

        self.enc_mu, self.enc_logvar, self.dec = stack(), stack(), stack()
        self.latent_drop = Dropout(cfg.reparam_dropout)
        if cfg.variant in VARIATIONAL:  # "layerwise" adaptive variational dropout: one learned scalar
            p = cfg.vd_init_p
            a0 = math.sqrt(p / (1.0 - p))
            self.logit_alpha = nn.Parameter(torch.tensor(math.log(a0 / (1.0 - a0))))
        # optimizer steps taken (the official trainer's self.step): drives beta(t); a buffer so it is checkpointed
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))
        self.apply(self._init_weights)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        mode = cfg.eval_latent
        self.eval_with_std = mode == "mean_plus_std" or (mode == "auto" and cfg.variant not in SAMPLED)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:  # the official: N(0, 0.02) weights, zero biases, LayerNorm (1, 0)
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---- the network ---------------------------------------------------------------------------------
    def embed(self, seq: Tensor) -> Tensor:  # seq [B, L] -> [B, L, D]
        l = seq.shape[1]
        pos = torch.arange(self.info.max_len - l, self.info.max_len, device=seq.device)  # right-aligned
        return self.emb_drop(self.emb_ln(self.item_emb(seq) + self.pos_emb(pos)))

    @staticmethod
    def run(blocks: nn.ModuleList, x: Tensor, allow: Tensor, last_only: bool = False) -> Tensor:
        for i, blk in enumerate(blocks):
            x = blk(x, allow, last_only=last_only and i == len(blocks) - 1)
        return x

    def latent(self, seq: Tensor) -> tuple[Tensor, Tensor]:  # seq [B, L] -> mu, logvar [B, L, D] each
        x, allow = self.embed(seq), attention_mask(seq, causal=True)
        return self.run(self.enc_mu, x, allow), self.run(self.enc_logvar, x, allow)

    def encode(self, seq: Tensor, last_only: bool = False) -> Tensor:  # seq [B, L] -> [B, L, D] ([B, 1, D])
        """Decoder states on the deterministic latent (``eval_latent``): no sampling, so a user's vector is
        a function of the history alone."""
        x, allow = self.embed(seq), attention_mask(seq, causal=True)
        z = self.run(self.enc_mu, x, allow)  # [B, L, D] mu
        if self.eval_with_std:
            z = z + torch.exp(0.5 * self.run(self.enc_logvar, x, allow))
        return self.run(self.dec, z, allow, last_only)

    def user_embeddings(self, batch: Batch) -> Tensor:
        return self.encode(batch.seq, last_only=True)[:, -1]  # [B, D]: the state after the most recent behaviour

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight[: self.info.num_items + 1]  # [I+1, D]; never the [MASK] row

    # ---- training ------------------------------------------------------------------------------------
    def kl_weight(self) -> float:
        """beta(t) = min(anneal_cap, t / total_annealing_steps), t = optimizer steps so far (linear annealing)."""
        return min(self.cfg.anneal_cap, float(self.anneal_step) / self.cfg.total_annealing_steps)

    def alpha(self) -> Tensor:  # vd: the learned noise scale, a scalar in (0, 1)
        return torch.sigmoid(self.logit_alpha)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        cfg, v = self.cfg, self.cfg.variant
        seq, tgt = batch.seq, batch.pos_targets  # [B, L] each
        keep = tgt > 0  # [B, L]
        beta = self.kl_weight()  # the weight of this step, then the counter moves on (as the official trainer)
        if self.training:
            self.anneal_step.add_(1)  # a buffer, no gradient
        allow = attention_mask(seq, causal=True)  # both views decode under the original history's mask
        neg = self.negatives(seq, tgt) if cfg.loss == "bce" else None

        mu1, lv1 = self.latent(seq)  # [B, L, D] each
        std1 = torch.exp(0.5 * lv1)
        z1 = mu1 + std1 * torch.randn_like(std1) if v in SAMPLED else mu1 + std1
        zs, kls = [z1], [self.kl(mu1, lv1)]
        parts: dict[str, float] = {}
        extra = z1.new_zeros(())
        if v != "avae":
            mu2, lv2 = self.latent(self.augment(seq) if v in AUGMENTED else seq)
            std2 = torch.exp(0.5 * lv2)
            if v == "vae_cl":
                z2 = mu2 + std2 * torch.randn_like(std2)
            elif v in VARIATIONAL:
                a = self.alpha()
                z2 = mu2 + std2 * a * torch.randn_like(std2)
                prior = -(0.5 * torch.log(a) + _C1 * a + _C2 * a**2 + _C3 * a**3)
                extra = extra + prior
                parts.update(prior_kl=prior.item(), alpha=a.item())
            else:  # ma, da
                z2 = mu2 + self.latent_drop(std2)
            zs.append(z2)
            kls.append(self.kl(mu2, lv2))
            nce = self.info_nce(z1.sum(1), z2.sum(1))  # user = z summed over positions, padding included
            extra = extra + cfg.latent_clr_weight * nce
            parts["nce"] = nce.item()
        rec = torch.stack([self.reconstruction(self.run(self.dec, z, allow), tgt, keep, neg) for z in zs]).sum()
        kl = torch.stack(kls).sum()
        total = rec + beta * kl + extra
        return total, {"loss": total.item(), "rec": rec.item(), "kl": kl.item(), "kl_weight": beta, **parts}

    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:  # [B, L, D] -> scalar: KL(q || N(0, I)), mean over B and L
        return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()

    def reconstruction(self, h: Tensor, tgt: Tensor, keep: Tensor, neg: Tensor | None) -> Tensor:
        """h [B, L, D] decoder states, tgt / neg [B, L] -> mean over the positions with a target."""
        if not bool(keep.any()):
            return h.sum() * 0.0
        u, t = h[keep], tgt[keep]  # [N, D], [N]
        if neg is None:  # loss: softmax
            return self.tower_loss(u, t)
        pos_logit = (u * self.item_emb(t)).sum(-1)  # [N]
        neg_logit = (u * self.item_emb(neg[keep])).sum(-1)
        # -log sigmoid(pos) - log(1 - sigmoid(neg)), in the stable softplus form
        return (F.softplus(-pos_logit) + F.softplus(neg_logit)).mean()

    def info_nce(self, a: Tensor, b: Tensor) -> Tensor:
        """NT-Xent: a, b [B, D] -> scalar. Each of the 2B vectors must pick its other view among the 2B - 1
        others (cosine / temperature); the official's [sim12, sim11; sim22, sim21] layout up to column order."""
        n = a.shape[0]
        x = F.normalize(torch.cat([a, b]), dim=-1)  # [2B, D]
        sim = (x @ x.T) / self.cfg.temperature  # [2B, 2B]
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=x.device), float("-inf"))
        labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(x.device)
        return F.cross_entropy(sim, labels)

    def negatives(self, seq: Tensor, tgt: Tensor) -> Tensor:
        """[B, L] uniform ids in 1..I; a draw that hits an item of its row (history or targets) is redrawn up to
        ``neg_tries`` times (the official excludes the user's items by rejection)."""
        known = torch.cat([seq, tgt], dim=1)  # [B, 2L]
        n_items = self.info.num_items
        neg = torch.randint(1, n_items + 1, seq.shape, device=seq.device)
        for _ in range(self.cfg.neg_tries):
            hit = (neg[:, :, None] == known[:, None, :]).any(-1) & (tgt > 0)  # [B, L]
            if not bool(hit.any()):
                break
            neg = torch.where(hit, torch.randint_like(neg, 1, n_items + 1), neg)
        return neg

    # ---- data augmentation (da, vd_da) ----------------------------------------------------------------
    def augment(self, seq: Tensor) -> Tensor:
        """seq [B, L] left-padded -> an augmented copy, still left-padded. The official dice always reorders;
        ``augmentation_dice: fixed`` draws crop / mask / reorder uniformly per row."""
        n = (seq > 0).sum(1)  # [B] real items; they fill the last n columns
        if self.cfg.augmentation_dice == "official":
            return self.reorder(seq, n)
        kind = torch.randint(0, 3, (seq.shape[0], 1), device=seq.device)  # [B, 1]: 0 crop, 1 mask, 2 reorder
        return torch.where(kind == 0, self.crop(seq, n),
                           torch.where(kind == 1, self.mask(seq, n), self.reorder(seq, n)))

    @staticmethod
    def _span(n: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
        """n [B] -> (k = floor(n * ratio), start uniform in 0..n - k), in item coordinates (0 = oldest)."""
        k = torch.floor(n.double() * ratio).long()
        start = torch.floor(torch.rand(n.shape, device=n.device, dtype=torch.float64) * (n - k + 1)).long()
        return k, torch.minimum(start, n - k)

    def reorder(self, seq: Tensor, n: Tensor) -> Tensor:
        """Shuffle a random span of floor(reorder_ratio * n) consecutive items of each row."""
        b, l = seq.shape
        k, start = self._span(n, self.cfg.reorder_ratio)
        col = torch.arange(l, device=seq.device)[None]  # [1, L]
        lo = (l - n + start)[:, None]  # [B, 1] first column of the span
        inside = (col >= lo) & (col < lo + k[:, None])  # [B, L]
        # sort keys: columns outside keep their integer index; the span's keys all lie in [lo, lo + 0.5), below
        # the next outside column (lo + k >= lo + 1), so sorting permutes the span at random and nothing else
        key = torch.where(inside, lo + 0.5 * torch.rand(b, l, device=seq.device, dtype=torch.float64),
                          col.double())
        return seq.gather(1, key.argsort(dim=1))

    def crop(self, seq: Tensor, n: Tensor) -> Tensor:
        """Keep floor(crop_ratio * n) consecutive items at a random offset, right-aligned (left-padded)."""
        l = seq.shape[1]
        k, start = self._span(n, self.cfg.crop_ratio)
        col = torch.arange(l, device=seq.device)[None]  # [1, L]
        src = (l - n + start)[:, None] + col - (l - k)[:, None]  # [B, L]: the source column of output column
        filled = col >= (l - k)[:, None]
        return torch.where(filled, seq.gather(1, src.clamp(0, l - 1)), torch.zeros_like(seq))

    def mask(self, seq: Tensor, n: Tensor) -> Tensor:
        """Replace floor(mask_ratio * n) distinct random items of each row by [MASK]."""
        m = torch.floor(n.double() * self.cfg.mask_ratio).long()  # [B]
        key = torch.rand(seq.shape, device=seq.device).masked_fill(seq == 0, 2.0)  # padding sorts last
        rank = key.argsort(dim=1).argsort(dim=1)  # [B, L]
        return seq.masked_fill(rank < m[:, None], self.mask_id)
