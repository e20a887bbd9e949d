"""T2Diff (Wang et al., WWW '25): a two-tower matcher whose user tower restores the next behaviour with a
diffusion module (§4.2) and crosses it with the session and the history in a mixed-attention module (§4.3).

User tower, for a left-padded sequence X_{1:n} (n = max_len, most recent last):

1. Diffusion (Alg. 1 in training, Alg. 2 at inference) -> x_hat_{n+1}, on inputs detached from the embedding
   table; only L_KL trains the U-Net (stop-gradient, Fig. 2a).
2. h_s = mean(Transformer([X_session; x_hat_{n+1}])) over non-padding tokens (eq. 19).
3. h_l = sum_j a_j x_j over the older history, a = softmax over non-padding positions of an activation unit on
   [x_j, x_j - h_s, x_j * h_s, h_s] (+ a bucketised time-lag embedding when timestamps exist) (eq. 20–21).
4. e_u = FFN([h_l; h_s]) (eq. 22), or the plain concat (``user_ffn=False``, the authors' choice).

Item tower: id embedding (+ mean-pooled side-feature embeddings) through an MLP -> e_i. The same id(+feature)
vectors are the behaviour embeddings X of the user tower. Scores are e_u . e_i.

Objective: L = L_TOWER + lambda * L_KL (eq. 24–25).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.data.sessions import session_mask
from t2diff.diffusion.keyed_noise import keyed_normal, row_keys
from t2diff.diffusion.schedule import REVERSE_NOISE, SCHEDULES, NoiseSchedule
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.models.layers import SideFeatures, TransformerBlock
from t2diff.models.unet1d import PADDING_MODES, TIME_EMBS, UNet1D

KL_LOSSES = ("mse", "l2")
KL_POSITIONS = ("all", "last")


@dataclass
class T2DiffConfig:
    hidden: int = 64  # D, item embedding dim (and user vector dim when user_ffn)
    session_len: int = 10  # k: the last k behaviours form the session, the older ones the history
    # with timestamps: the session also ends at the last gap longer than this many seconds (DESIGN §1, the
    # paper's time-gap sessions); behaviours before the gap go to the history. None: last k only.
    session_gap: int | None = None
    dropout: float = 0.1
    # --- diffusion module (§4.2)
    diffusion: bool = True  # False = "mixed-attention only" ablation (no x_hat in the session)
    drift: bool = True  # False = "W/O DP" ablation: diffuse X_{2:n+1} itself instead of the drift
    schedule: str = "exp"  # exp | linear | log (Table 3)
    steps: int = 50  # T (Table 4: 10 / 50 / 200)
    beta_a: float = 0.01  # exp schedule: beta_r = a * exp(b * r / T)
    beta_b: float = 4.5
    beta_start: float | None = None  # linear / log endpoints (None: DDPM's, scaled by 1000 / T)
    beta_end: float | None = None
    max_beta: float = 0.999
    reverse_noise: str = "std"  # std: sqrt(beta_tilde) (eq. 4) | var: beta_tilde as in eq. 17 (authors)
    kl_loss: str = "mse"  # mse: ||z0_hat - z0||^2 (eq. 23) | l2: un-squared norm (authors)
    kl_weight: float = 1.0  # lambda (paper 1 or 10, authors 0.1 on ML-1M / 10 on KuaiRand)
    kl_mask_padding: bool = True  # average L_KL only where X_{j+1} is a real item (False: all positions)
    # positions L_KL covers: all n drift positions (eq. 23, paper) | last: only d_n = x_{n+1} - x_n, the one
    # the condition X_{1:n} does not reveal (every earlier d_j is readable from it, see RESULTS.md)
    kl_positions: str = "all"
    detach_xhat: bool = True  # stop-gradient between x_hat_{n+1} and the mixed-attention module (Fig. 2a)
    # eval mode: the reverse chain's noise is a hash of (eval_seed, the user's history, step), so a user gets the
    # same x_hat in any batch position or batch size (serve == retrieve); None: the global torch RNG
    eval_seed: int | None = 0
    # --- U-Net approximator
    unet_levels: int = 4
    unet_base_channels: int = 0  # 0: = hidden
    unet_channel_mult: int = 2
    unet_convs_per_level: int = 1
    unet_padding: str = "reflect"  # zeros | reflect | replicate | circular
    unet_time_emb: str = "sinusoidal"  # sinusoidal (paper) | authors (0.01 * sin(t / 2^f) added to input)
    unet_final_proj: bool = True
    # --- mixed-attention module (§4.3)
    num_heads: int = 2
    session_layers: int = 1
    session_ffn_dim: int = 256
    session_mask_diag: bool = False  # authors: a token may not attend to itself
    session_pos_emb: bool = False  # learned positions in the session encoder (neither paper nor authors)
    din_hidden: int = 64
    use_time: bool = True  # time-lag feature in the target attention (only when the data has timestamps)
    time_buckets: int = 32  # bucket = floor(log2(1 + lag seconds)), capped
    time_emb_dim: int = 16
    user_ffn: bool = True  # eq. 22; False: e_u = [h_l; h_s] (authors), item vectors are then 2D wide
    user_ffn_hidden: int = 256
    # --- item tower
    use_item_features: bool = True
    item_mlp_hidden: int = 128

    def validate(self) -> None:
        choices = {"schedule": SCHEDULES, "reverse_noise": REVERSE_NOISE, "kl_loss": KL_LOSSES,
                   "kl_positions": KL_POSITIONS, "unet_padding": PADDING_MODES, "unet_time_emb": TIME_EMBS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"t2diff: {name}={getattr(self, name)!r}; choose one of {allowed}")
        for name in ("hidden", "session_len", "steps", "unet_levels", "num_heads", "session_layers",
                     "time_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"t2diff: {name} must be >= 1, got {getattr(self, name)}")


class T2Diff(SideFeatures, SeqRecModel):
    """T2Diff user tower + item tower.

    Input rules (``batch.seq`` [B, L] left-padded with 0, most recent last; ``batch.target`` [B]):

    - ``L`` must equal ``info.max_len``, else ``ValueError`` (truncating longer histories is the caller's
      job, e.g. ``Batch.from_histories``).
    - Session = the last ``session_len`` columns, history = the older ones. A history that is all padding
      (short user) gives ``h_l = 0``; an all-padding sequence gives finite embeddings (the session is then
      x_hat alone, or empty, which pools to 0).
    - ``loss`` needs every ``batch.target`` > 0 (``ValueError`` otherwise); ``user_embeddings`` ignores it.
    - Time lags use ``seq_time`` / ``target_time`` only where ``info.has_time`` and both are > 0; an unknown
      time (0) falls in a dedicated "unknown" bucket.
    - Inference runs the full T-step reverse chain (Alg. 2). In eval mode its noise is keyed by
      (``eval_seed``, the row's item ids, step) (``diffusion.keyed_noise``), so a history gets the same
      embedding whatever its row, batch size or device; with ``eval_seed=None`` the global RNG is used.
    """

    Config = T2DiffConfig
    causal = False

    def __init__(self, cfg: T2DiffConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        cfg.validate()
        d = cfg.hidden
        self.item_emb = nn.Embedding(info.num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

        # side features: [I+1, F] long tokens, 0 = none; mean-pooled embeddings added to the id embedding
        self.init_side_features(info, d, cfg.use_item_features)

        # diffusion module (§4.2)
        if cfg.diffusion:
            self.schedule = NoiseSchedule(cfg.schedule, cfg.steps, cfg.beta_a, cfg.beta_b, cfg.beta_start,
                                          cfg.beta_end, cfg.max_beta, cfg.reverse_noise)
            self.unet = UNet1D(d, d, d, levels=cfg.unet_levels, base_channels=cfg.unet_base_channels or d,
                               channel_mult=cfg.unet_channel_mult, padding_mode=cfg.unet_padding,
                               time_emb=cfg.unet_time_emb, steps=cfg.steps, final_proj=cfg.unet_final_proj,
                               convs_per_level=cfg.unet_convs_per_level)

        # mixed-attention module (§4.3)
        self.k = min(cfg.session_len, info.max_len)
        self.session_pos = nn.Embedding(self.k + 1, d) if cfg.session_pos_emb else None
        self.session_drop = nn.Dropout(cfg.dropout)
        self.session_blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.session_ffn_dim, cfg.dropout)
            for _ in range(cfg.session_layers)
        )
        self.session_ln = nn.LayerNorm(d)
        self.use_time = cfg.use_time and info.has_time
        tdim = cfg.time_emb_dim if self.use_time else 0
        if self.use_time:
            self.time_emb = nn.Embedding(cfg.time_buckets + 1, tdim, padding_idx=0)  # bucket 0 = unknown
        self.din = nn.Sequential(nn.Linear(4 * d + tdim, cfg.din_hidden), nn.GELU(),
                                 nn.Linear(cfg.din_hidden, 1))  # activation unit (Fig. 3)
        if cfg.user_ffn:
            self.user_mlp = nn.Sequential(nn.Linear(2 * d, cfg.user_ffn_hidden), nn.GELU(),
                                          nn.Dropout(cfg.dropout), nn.Linear(cfg.user_ffn_hidden, d))
        self.out_dim = d if cfg.user_ffn else 2 * d  # item vectors must match the user vector width

        # item tower
        self.item_mlp = nn.Sequential(nn.Linear(d, cfg.item_mlp_hidden), nn.GELU(),
                                      nn.Linear(cfg.item_mlp_hidden, self.out_dim))

    # ------------------------------------------------------------------ inputs
    def _check(self, batch: Batch) -> None:
        if batch.seq.dim() != 2:
            raise ValueError(f"batch.seq must be [B, L], got shape {tuple(batch.seq.shape)}")
        if batch.seq.shape[1] != self.info.max_len:
            raise ValueError(f"batch.seq has length {batch.seq.shape[1]} but the model was built for "
                             f"max_len={self.info.max_len}; truncate / left-pad histories to max_len first")

    def item_inputs(self, ids: Tensor) -> Tensor:
        """Behaviour embeddings of ids [...] -> [..., D]: id embedding + mean of side-feature embeddings."""
        x = self.with_side_features(self.item_emb(ids), ids)
        return x * (ids > 0).unsqueeze(-1).to(x.dtype)  # padding stays exactly 0

    def item_embeddings(self) -> Tensor:  # [I+1, out_dim]
        ids = torch.arange(self.info.num_items + 1, device=self.item_emb.weight.device)
        return self.item_mlp(self.item_inputs(ids))

    # ------------------------------------------------------------------ diffusion module (§4.2)
    def diffusion_target(self, xd: Tensor, x_next: Tensor) -> Tensor:
        """z0 from the detached behaviours xd = X_{1:n} [B, L, D] and x_{n+1} [B, D] (eq. 10–11)."""
        x_shift = torch.cat([xd[:, 1:], x_next[:, None]], dim=1)  # X_{2:n+1} (eq. 10, sliding window)
        return x_shift - xd if self.cfg.drift else x_shift  # eq. 11 drift d_{1:n}; W/O DP: X_{2:n+1}

    def utilize(self, z0: Tensor, xd: Tensor) -> Tensor:
        """x_hat_{n+1} = Slice(z0 + X_{1:n}) (eq. 18); W/O DP: Slice(z0). [B, L, D] -> [B, D]"""
        return (z0 + xd)[:, -1] if self.cfg.drift else z0[:, -1]

    def approximate(self, z_t: Tensor, xd: Tensor, t: Tensor) -> Tensor:
        """z0_hat = U-Net(concat([z_t, X_{1:n}]), t) (eq. 15–16)."""
        return self.unet(z_t, xd, t)

    def kl_mask(self, batch: Batch) -> Tensor:
        """[B, L] float: positions j whose X_{j+1} is a real item (all ones when kl_mask_padding is off); with
        ``kl_positions=last`` only the last column (the drift to the unknown x_{n+1})."""
        nxt = torch.cat([batch.seq[:, 1:], batch.target[:, None]], dim=1) > 0  # [B, L]
        mask = nxt.float() if self.cfg.kl_mask_padding else torch.ones_like(nxt, dtype=torch.float)
        if self.cfg.kl_positions == "last":
            mask[:, :-1] = 0.0
        return mask

    def kl_loss(self, z0_hat: Tensor, z0: Tensor, mask: Tensor) -> Tensor:
        """L_KL (eq. 23): squared error summed over features (``mse``) or its square root (``l2``, authors),
        averaged over the masked positions of the batch."""
        sq = (z0_hat - z0).pow(2).sum(-1)  # [B, L]
        err = sq if self.cfg.kl_loss == "mse" else sq.clamp_min(1e-12).sqrt()
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def _diffuse_train(self, xd: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Alg. 1: one random step per example. Returns x_hat_{n+1} [B, D] and L_KL."""
        x_next = self.item_inputs(batch.target).detach()  # x_{n+1}, stop-gradient (Fig. 2a)
        z0 = self.diffusion_target(xd, x_next)  # [B, L, D] (eq. 10–11)
        r = self.schedule.sample_steps(xd.shape[0], device=xd.device)  # eq. 12
        z_r = self.schedule.q_sample(z0, r, torch.randn_like(z0))  # eq. 14
        z0_hat = self.approximate(z_r, xd, r)  # eq. 15
        kl = self.kl_loss(z0_hat, z0, self.kl_mask(batch))  # eq. 23
        return self.utilize(z0_hat, xd), kl  # Alg. 1 line 10 (eq. 18)

    def eval_generator(self, device: torch.device) -> torch.Generator | None:
        """A generator freshly seeded with ``eval_seed`` (eval mode only); None means the global RNG."""
        if self.training or self.cfg.eval_seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(self.cfg.eval_seed))
        return g

    def chain_noise(self, seq: Tensor, dtype: torch.dtype) -> Callable[[int], Tensor] | None:
        """Eval mode with ``eval_seed``: noise_fn(k) -> [B, L, D] keyed by each row's ids (keyed_noise); else
        None (the global RNG)."""
        if self.training or self.cfg.eval_seed is None:
            return None
        keys = row_keys(seq, int(self.cfg.eval_seed))  # [B]
        shape = (seq.shape[1], self.cfg.hidden)
        return lambda k: keyed_normal(keys, k, shape, dtype)

    def _diffuse_infer(self, xd: Tensor, seq: Tensor) -> Tensor:
        """Alg. 2: the full T-step reverse chain from z_T ~ N(0, I) for X_{1:n} = xd [B, L, D] of the ids seq
        [B, L]. Returns x_hat_{n+1} [B, D]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.detach_xhat):
            z0 = self.schedule.reverse_chain(lambda z, t: self.approximate(z, xd, t), tuple(xd.shape),
                                             device=xd.device, dtype=xd.dtype,
                                             noise_fn=self.chain_noise(seq, xd.dtype))
            return self.utilize(z0, xd)  # eq. 18

    # ------------------------------------------------------------------ mixed-attention module (§4.3)
    def _session_allow(self, valid: Tensor) -> Tensor:
        """[B, 1, S, S] attention mask: keys must be real tokens; optionally not the query itself. A row left
        with no key (a padding query, or a lone token with the diagonal masked) falls back to itself."""
        s = valid.shape[1]
        eye = torch.eye(s, dtype=torch.bool, device=valid.device)
        allow = valid[:, None, None, :].expand(-1, 1, s, -1)  # [B, 1, S, S]
        if self.cfg.session_mask_diag:
            allow = allow & ~eye
        empty = ~allow.any(-1, keepdim=True)  # [B, 1, S, 1]
        return allow | (empty & eye)

    def _target_attention(self, h_s: Tensor, xh: Tensor, mh: Tensor, batch: Batch) -> Tensor:
        """h_l = sum_j a_j x_j, a = softmax over real history items of DIN([x_j, x_j - h_s, x_j * h_s, h_s,
        time_lag_j]) (eq. 20–21). h_s [B, D], xh [B, H, D], mh [B, H] bool -> [B, D]; 0 if no history."""
        if xh.shape[1] == 0:
            return torch.zeros_like(h_s)
        hs = h_s[:, None].expand_as(xh)  # [B, H, D]
        feats = [xh, xh - hs, xh * hs, hs]
        if self.use_time:
            st = batch.seq_time[:, : xh.shape[1]]  # [B, H]
            tt = batch.target_time[:, None]  # [B, 1]
            known = mh & (st > 0) & (tt > 0)
            lag = (tt - st).clamp_min(0).float()
            bucket = torch.floor(torch.log2(1.0 + lag)).long().clamp(0, self.cfg.time_buckets - 1) + 1
            feats.append(self.time_emb(torch.where(known, bucket, torch.zeros_like(bucket))))  # [B, H, Dt]
        scores = self.din(torch.cat(feats, dim=-1)).squeeze(-1)  # [B, H]
        scores = scores.masked_fill(~mh, torch.finfo(scores.dtype).min)
        a = torch.softmax(scores, dim=-1) * mh.to(scores.dtype)  # eq. 20; an all-padding row -> all zeros
        return (a.unsqueeze(-1) * xh).sum(1)  # eq. 21

    def _user_vec(self, x: Tensor, batch: Batch, x_hat: Tensor | None) -> Tensor:
        """Mixed attention: x [B, L, D] behaviours, x_hat [B, D] or None -> e_u [B, out_dim]."""
        seq = batch.seq
        n = seq.shape[1]
        gap = self.cfg.session_gap if self.info.has_time else None
        in_session = session_mask(seq, batch.seq_time, self.k, gap)  # [B, L] bool
        xs, ms = x[:, n - self.k:], in_session[:, n - self.k:]  # X_session [B, k, D], [B, k]
        if x_hat is not None:
            if self.cfg.detach_xhat:
                x_hat = x_hat.detach()  # stop-gradient (Fig. 2a)
            xs = torch.cat([xs, x_hat[:, None]], dim=1)  # concat([X_session, x_hat_{n+1}]) [B, k+1, D]
            ms = torch.cat([ms, torch.ones_like(ms[:, :1])], dim=1)
        if self.session_pos is not None:
            xs = xs + self.session_pos(torch.arange(xs.shape[1], device=xs.device))
        h = self.session_drop(xs)
        allow = self._session_allow(ms)
        for blk in self.session_blocks:
            h = blk(h, allow)
        h = self.session_ln(h)  # [B, S, D]
        w = ms.unsqueeze(-1).to(h.dtype)
        h_s = (h * w).sum(1) / w.sum(1).clamp_min(1.0)  # eq. 19: mean over real tokens -> [B, D]
        hist = (seq > 0) & ~in_session  # older behaviours, including any cut from the session by a time gap
        h_l = self._target_attention(h_s, x, hist, batch)  # [B, D]
        u = torch.cat([h_l, h_s], dim=-1)  # [B, 2D]
        return self.user_mlp(u) if self.cfg.user_ffn else u  # eq. 22

    # ------------------------------------------------------------------ interface
    def forward_train(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Training forward (Alg. 1 + §4.3): user vectors [B, out_dim] and L_KL (0 without diffusion)."""
        self._check(batch)
        x = self.item_inputs(batch.seq)  # [B, L, D]
        x_hat, kl = None, x.new_zeros(())
        if self.cfg.diffusion:
            x_hat, kl = self._diffuse_train(x.detach(), batch)  # inputs detached (Fig. 2a)
        return self._user_vec(x, batch, x_hat), kl

    def user_embeddings(self, batch: Batch) -> Tensor:  # [B, out_dim]
        self._check(batch)
        x = self.item_inputs(batch.seq)  # [B, L, D]
        x_hat = self._diffuse_infer(x.detach(), batch.seq) if self.cfg.diffusion else None  # Alg. 2
        return self._user_vec(x, batch, x_hat)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        if bool((batch.target <= 0).any()):
            raise ValueError("T2Diff.loss needs a real next item (> 0) in every batch.target")
        user_vecs, kl = self.forward_train(batch)
        tower = self.tower_loss(user_vecs, batch.target)  # eq. 24
        total = tower + self.cfg.kl_weight * kl if self.cfg.diffusion else tower  # eq. 25
        return total, {"tower": tower.item(), "kl": float(kl.item()), "loss": total.item()}
