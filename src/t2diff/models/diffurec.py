"""DiffuRec (Li, Sun, Li, "DiffuRec: A Diffusion Model for Sequential Recommendation", TOIS 42(3) 2024,
arXiv 2304.00686), re-implemented from the paper and the official code (WHUIR/DiffuRec, ``src/diffurec.py``,
``src/model.py``; notes in shared/research/baselines.md §4). No code is copied.

The model diffuses the embedding of the *target* item and reconstructs it from the history:

- Diffusion phase: x_0 = e_{n+1} (the target's embedding), x_t = sqrt(a_bar_t) x_0 + sqrt(1 - a_bar_t) eps with t
  uniform (the official ``lossaware`` sampler is never updated, so it stays uniform).
- Approximator: x_hat_0 = f(h, x_t, t). The history h = LayerNorm(Dropout(E[seq])) receives x_t plus a step
  embedding d at EVERY position, scaled per element by lambda ~ N(delta, delta) (delta = ``lambda_uncertainty``,
  0.001): z_i = h_i + lambda_i * (x_t + d). z goes through a stack of Transformer blocks, the last position's output
  (after dropout and LayerNorm) is x_hat_0: the network predicts x_0, not the noise.
- Loss: cross-entropy of x_hat_0 . E^T over the items against the target ("rounding" by inner product); no MSE term.
- Reverse phase (inference): x_T ~ N(0, I), then for t = T..1: x_hat_0 = f(h, x_t, t), x_{t-1} = mu_tilde(x_hat_0,
  x_t) + sigma_t z (no noise at the last step, which returns x_hat_0 itself): T = 32 approximator passes per user.
  The user vector is that final x_hat_0, scored against ``item_embeddings()`` (the item table) by dot product.

Training is per example (``causal = False``; the trainer gives one (history, ``batch.target``) pair per example):
the official approximator attends bidirectionally over the whole history, every position of which carries the
target's x_t, so the all-positions causal trick of SASRec is not the same model.

Defaults follow the official code (ML-1M uses its global defaults): hidden 128, 4 blocks, 4 heads, FFN 4 x hidden,
dropout 0.1, embedding dropout 0.3, T = 32, ``trunc_lin`` schedule, delta 0.001, rescaled step embedding, and
its quirks, each behind a labelled option where another reading exists:

=======================  =======================================  =============================================
option                   default = official code                  alternative
=======================  =======================================  =============================================
``position_embedding``   false: the position table is commented   true: learned, right-aligned positions added
                         out; with no causal mask the older       before the LayerNorm (a Transformer as usually
                         items are a bag, only the last is known  specified; the paper calls the approximator a
                                                                  Transformer)
``pad_mask``             ``query``: padded QUERY rows are filled  ``key``: padded keys are hidden (the usual
                         with -1e9 (uniform attention), padded    padding mask); then leading padding can be
                         keys stay visible; the pad embedding     dropped for speed
                         (row 0, learned) is an input token
``reverse_variance``     ``beta``: sigma_t^2 = beta_t             ``posterior``: sigma_t^2 = beta_tilde_t, the
                         ("fixed large", improved-diffusion)      DDPM posterior variance (NoiseSchedule.post_var)
``schedule``             ``trunc_lin`` (below)                    ``linear`` (DDPM's, scaled by 1000 / T),
                                                                  ``exp`` / ``log`` (T2Diff Table 3)
``item_init_std``        null: the item table keeps nn.Embedding's  a number s: N(0, s^2) (0.02 as our other
                         N(0, 1), so item norms are ~sqrt(d)      baselines; not the official code): logits
                         (~11 at d = 128) and x_hat_0 . e_i       start near 0 instead of in the hundreds,
                         starts in the hundreds                   and x_0 is small beside the noise
=======================  =======================================  =============================================

With ``pad_mask: query`` the number of visible pad tokens matters, so every history is re-padded to max_len (the
official input width) whatever width the batch has; a user's vector never depends on the batch's padding.

Paper vs code: the notes record that the paper's text also trains with the CE of x_hat_0 (not an MSE / KL term);
the rest of the paper's body could not be re-read for this port, so the alternatives above are labelled by what
they are (a position table, the usual padding mask, the DDPM posterior variance), not claimed as "the paper's".

Deviations, all small: the softmax of ``tower_loss`` excludes the padding row (the official CE includes item 0);
the run's objective (``train.loss``) may replace the full softmax; nn.LayerNorm in the blocks (eps 1e-12 as
official); in eval mode the noise (x_T, each step's z and lambda) is keyed by (``eval_seed``, the history, step)
(``diffusion.keyed_noise``) instead of a seeded global RNG, so a user's vector does not depend on its batch. The
official code hard-codes CUDA device 2 and uses ``np.int`` (NumPy >= 1.24 fails); neither is reproduced. Outside
the model: the official run trains on every prefix of every user each epoch (up to 500 epochs, StepLR); our
trainer draws ``data.loo.train_targets`` target positions per user per epoch (configs/*/diffurec.yaml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.config import ConfigError, at_least, check_fields, choice
from t2diff.diffusion.keyed_noise import keyed_normal
from t2diff.diffusion.schedule import SCHEDULES, NoiseSchedule
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.models.dropout import Dropout
from t2diff.models.layers import TransformerConfig
from t2diff.models.t2diff_causal import prefix_keys

DIFFUREC_SCHEDULES = ("trunc_lin", *SCHEDULES)
PAD_MASKS = ("query", "key")  # official (padded query rows masked) | usual (padded keys masked)
REVERSE_VARIANCES = ("beta", "posterior")  # sigma_t^2 of the reverse step
LAMBDA_STREAM = 1 << 20  # keyed-noise step offset of lambda's draws (x_T is step 0, a reverse step's z is step t)
MASK_FILL = -1e9  # the official score fill value (not -inf: a fully masked row becomes uniform, never NaN)


@dataclass
class DiffuRecConfig(TransformerConfig):
    """The official defaults (``src/main.py``): sizes of the approximator, diffusion, quirk switches."""

    hidden: int = 128
    num_blocks: int = 4
    num_heads: int = 4  # fixed to 4 in the official Transformer_rep
    ffn_dim: int = 512  # 4 x hidden in the official code
    dropout: float = 0.1
    emb_dropout: float = 0.3
    steps: int = at_least(32)  # T
    schedule: str = choice("trunc_lin", DIFFUREC_SCHEDULES)
    lambda_uncertainty: float = 0.001  # delta: lambda ~ N(delta, delta) scales x_t at every history position
    rescale_timesteps: bool = True  # the step embedding sees t * 1000 / T (improved-diffusion convention)
    position_embedding: bool = False  # official: off (commented out)
    pad_mask: str = choice("query", PAD_MASKS)
    reverse_variance: str = choice("beta", REVERSE_VARIANCES)
    eval_seed: int = 0  # eval-mode noise = hash(eval_seed, history, step): batch-independent and reproducible
    item_init_std: float | None = None  # None: N(0, 1), the official nn.Embedding default; e.g. 0.02 (labelled)

    def __post_init__(self) -> None:
        self.validate_config("model")

    def validate_config(self, where: str) -> None:
        check_fields(self, where)
        for key in ("hidden", "num_blocks", "num_heads", "ffn_dim"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}.{key}: must be an int >= 1, got {v!r}")
        if self.hidden % self.num_heads:
            raise ConfigError(f"{where}.num_heads: {self.num_heads} does not divide {where}.hidden={self.hidden}")
        for key in ("dropout", "emb_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{where}.{key}: must lie in [0, 1), got {getattr(self, key)}")
        if not (self.lambda_uncertainty >= 0.0 and math.isfinite(self.lambda_uncertainty)):
            raise ConfigError(f"{where}.lambda_uncertainty: must be a finite number >= 0, "
                              f"got {self.lambda_uncertainty}")
        std = self.item_init_std
        if std is not None and (isinstance(std, bool) or not isinstance(std, (int, float))
                                or not (math.isfinite(std) and std > 0)):
            raise ConfigError(f"{where}.item_init_std: must be a finite number > 0 or null, got {std!r}")


def trunc_lin_betas(steps: int) -> tuple[float, float]:
    """First and last beta of DiffuRec's default ``trunc_lin`` schedule (from DiffuSeq): DDPM's linear endpoints
    scaled by 1000 / T, plus 0.01; if the last one exceeds 1, it becomes scale * 1e-3 + 0.01 instead. Betas are
    evenly spaced between them (our ``linear`` schedule with these endpoints). T = 32: 0.013125 -> 0.635."""
    scale = 1000.0 / steps
    start, end = scale * 1e-4 + 0.01, scale * 0.02 + 0.01
    if end > 1.0:
        end = scale * 1e-3 + 0.01
    return start, end


def make_schedule(name: str, steps: int) -> NoiseSchedule:
    """The noise schedule ``name`` over T = ``steps``; ``trunc_lin`` is a ``linear`` NoiseSchedule with DiffuRec's
    endpoints (betas above 0.999, only possible at T = 1, are clipped to it where the official code would fail)."""
    if name == "trunc_lin":
        start, end = trunc_lin_betas(steps)
        return NoiseSchedule("linear", steps, beta_start=start, beta_end=end)
    return NoiseSchedule(name, steps)


def step_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim] of (possibly fractional) steps t [N]: cos half, then sin half (as the
    official code; an odd dim gets a zero last column)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ApproximatorBlock(nn.Module):
    """One block of the official approximator (BERT-pytorch style): x + Dropout(Attn(LN(x))), x + Dropout(FFN(LN(x)))
    with a tanh-GELU FFN and dropout on the attention weights, then Dropout on the block's output. Attention scores
    where ``hide`` is True are REPLACED by -1e9 (masked_fill, as the official code), so a fully hidden row attends
    uniformly. Xavier-normal init of the FFN and output projections, as the official code."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim, eps=1e-12)
        self.qkv = nn.Linear(dim, 3 * dim)  # the official three q / k / v Linears, fused
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim, eps=1e-12)
        self.ffn1 = nn.Linear(dim, ffn_dim)
        self.ffn2 = nn.Linear(ffn_dim, dim)
        self.drop = Dropout(dropout)
        for lin in (self.proj, self.ffn1, self.ffn2):
            nn.init.xavier_normal_(lin.weight)

    def forward(self, x: Tensor, hide: Tensor, last_only: bool = False) -> Tensor:
        """x [B, L, D], hide [B, 1, L, L] bool (query i, key j) -> [B, L, D]; ``last_only``: only the last
        position's output [B, 1, D] (keys and values still from every position)."""
        b, l, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).view(b, l, 3, h, d // h).permute(2, 0, 3, 1, 4)  # [B, H, L, Dh] each
        if last_only:
            q, x, hide = q[:, :, -1:], x[:, -1:], hide[:, :, -1:]
        scores = (q @ k.transpose(-1, -2)) * (d // h) ** -0.5  # [B, H, Lq, L]
        att = self.drop(torch.softmax(scores.masked_fill(hide, MASK_FILL), dim=-1))
        x = x + self.drop(self.proj((att @ v).transpose(1, 2).reshape(b, x.shape[1], d)))
        x = x + self.drop(self.ffn2(self.drop(F.gelu(self.ffn1(self.ln2(x)), approximate="tanh"))))
        return self.drop(x)


class DiffuRec(SeqRecModel, config=DiffuRecConfig, paper_row="DiffuRec"):
    causal = False  # bidirectional over a history that carries the target's x_t: one (history, target) per example
    # leading all-padding columns change nothing: pad_mask=key hides them, pad_mask=query re-pads to max_len
    padding_free = True

    def __init__(self, cfg: DiffuRecConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        cfg.validate_config("model")
        d = cfg.hidden
        # N(0, 1) init and no padding_idx, as the official nn.Embedding: the pad row is a learned input token
        self.item_emb = nn.Embedding(info.num_items + 1, d)
        if cfg.item_init_std is not None:  # the labelled deviation: item norms ~ std * sqrt(d), not sqrt(d)
            nn.init.normal_(self.item_emb.weight, std=cfg.item_init_std)
        self.pos_emb = nn.Embedding(info.max_len, d) if cfg.position_embedding else None
        self.emb_drop = Dropout(cfg.emb_dropout)
        self.emb_ln = nn.LayerNorm(d, eps=1e-12)
        self.step_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))  # d = MLP(sinusoid(t))
        self.blocks = nn.ModuleList(
            ApproximatorBlock(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.num_blocks))
        self.out_drop = Dropout(cfg.dropout)
        self.out_ln = nn.LayerNorm(d, eps=1e-12)
        self.schedule = make_schedule(cfg.schedule, cfg.steps)

    @property
    def reverse_steps(self) -> int:
        """Approximator passes per user at inference (the ONNX export unrolls them)."""
        return self.cfg.steps

    # ------------------------------------------------------------------ pieces
    def item_embeddings(self) -> Tensor:  # [I+1, D]: the rounding table (scores = x_hat_0 . E^T)
        return self.item_emb.weight

    def _prepare(self, seq: Tensor) -> Tensor:
        """seq [B, L] -> [B, L'] the approximator sees: with the official mask the visible pad tokens count, so
        every history is left-padded to max_len (the official input width) whatever width the batch has."""
        if seq.dim() != 2 or seq.shape[1] > self.info.max_len:
            raise ValueError(f"batch.seq must be [B, L] with L <= max_len={self.info.max_len}, "
                             f"got shape {tuple(seq.shape)}")
        if self.cfg.pad_mask == "query" and seq.shape[1] < self.info.max_len:
            seq = F.pad(seq, (self.info.max_len - seq.shape[1], 0))
        return seq

    def history(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        """h [B, L, D] = LayerNorm(Dropout(E[seq] (+ P))) (dropout before the norm, as official) and the score mask
        hide [B, 1, L, L] (True = replaced by -1e9)."""
        l = seq.shape[1]
        h = self.emb_drop(self.item_emb(seq))
        if self.pos_emb is not None:  # right-aligned: the most recent behaviour is always position max_len - 1
            h = h + self.pos_emb(torch.arange(self.info.max_len - l, self.info.max_len, device=seq.device))
        pad = seq == 0  # [B, L]
        if self.cfg.pad_mask == "query":  # official: a padded query row is filled entirely (uniform attention)
            hide = pad[:, None, :, None].expand(-1, 1, l, l)
        else:  # padded keys hidden; the diagonal stays so an all-padding row does not attend to nothing
            hide = pad[:, None, None, :].expand(-1, 1, l, l) & ~torch.eye(l, dtype=torch.bool, device=seq.device)
        return self.emb_ln(h), hide

    def step_input(self, r: Tensor) -> Tensor:
        """d [N, D], the step embedding of our steps r [N] in 1..T (the official 0-based t = r - 1)."""
        t = (r - 1).float()
        if self.cfg.rescale_timesteps:
            t = t * (1000.0 / self.cfg.steps)
        return self.step_mlp(step_embedding(t, self.cfg.hidden))

    def lambdas(self, like: Tensor, keys: Tensor | None, r: int) -> Tensor:
        """lambda ~ N(delta, delta) per element [B, L, D] like h. Eval mode (``keys`` [B]): keyed draws over the
        max_len right-aligned positions, so a narrower (cropped) batch gets the same lambda per behaviour."""
        delta = self.cfg.lambda_uncertainty
        if keys is None:
            return delta + delta * torch.randn_like(like)
        l, d = like.shape[1:]
        z = keyed_normal(keys, LAMBDA_STREAM + r, (self.info.max_len, d), like.dtype)[:, -l:]  # [B, L, D]
        return delta + delta * z

    def approximator(self, h: Tensor, hide: Tensor, x_t: Tensor, r: Tensor, lam: Tensor) -> Tensor:
        """x_hat_0 [B, D] from the history h [B, L, D], x_t [B, D] at steps r [B]: z = h + lambda * (x_t + d) at
        every position (the uncertainty injection), Transformer blocks, last position, Dropout, LayerNorm."""
        z = h + lam * (x_t + self.step_input(r))[:, None]  # [B, L, D]
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            z = blk(z, hide, last_only=i == last)  # only the last position is read out: skip the rest at the end
        return self.out_ln(self.out_drop(z[:, -1]))

    def _normal(self, keys: Tensor | None, k: int, like: Tensor) -> Tensor:
        """N(0, I) noise [B, D] like ``like``: keyed stream k in eval mode, the global RNG in training."""
        if keys is None:
            return torch.randn_like(like)
        return keyed_normal(keys, k, tuple(like.shape[1:]), like.dtype)

    # ------------------------------------------------------------------ interface
    def user_embeddings(self, batch: Batch) -> Tensor:  # [B, D]: x_hat_0 of the reverse chain
        seq = self._prepare(batch.seq)
        h, hide = self.history(seq)
        keys = None if self.training else prefix_keys(seq, self.cfg.eval_seed)[:, -1]  # [B], padding-free
        b = seq.shape[0]
        x = self._normal(keys, 0, h[:, -1])  # x_T ~ N(0, I), [B, D]
        sch = self.schedule
        x0_hat = x  # replaced at every step (T >= 1)
        for r in range(self.cfg.steps, 0, -1):
            rr = torch.full((b,), r, dtype=torch.long, device=seq.device)
            x0_hat = self.approximator(h, hide, x, rr, self.lambdas(h, keys, r))
            if r > 1:  # at r = 1 (official t = 0) the posterior mean is x_hat_0 itself and no noise is added
                mean, post_var = sch.posterior_mean_variance(x0_hat, x, r)  # mu_tilde(x_hat_0, x_t)
                var = sch.betas[r].to(x.dtype) if self.cfg.reverse_variance == "beta" else post_var
                x = mean + var.sqrt() * self._normal(keys, r, x)
        return x0_hat

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        target = batch.target  # [B], one (history, next item) per example
        if not bool((target > 0).all()):
            raise ValueError("DiffuRec.loss needs a target item (batch.target > 0) for every example")
        seq = self._prepare(batch.seq)
        h, hide = self.history(seq)
        x0 = self.item_emb(target)  # [B, D]; not detached: the official target embedding gets x_t's gradient
        r = self.schedule.sample_steps(x0.shape[0], device=x0.device)  # uniform t
        x_t = self.schedule.q_sample(x0, r, torch.randn_like(x0))
        x0_hat = self.approximator(h, hide, x_t, r, self.lambdas(h, None, 0))
        loss = self.tower_loss(x0_hat, target)  # CE of x_hat_0 . E^T against the target (rounding)
        return loss, {"tower": loss.item()}
