"""T2Diff-causal: our variant of T2Diff (not the paper's model; the faithful one is ``models.t2diff``).

It keeps T2Diff's idea, a generated next behaviour x_hat crossed with the session and the history (§4.2–4.3),
and changes the four things measured to make the faithful model fail here (RESULTS.md, issue 14):

1. **Every position in one pass.** A causal self-attention backbone gives c_j, the summary of the behaviours up to
   j, for every position j of a window at once; x_hat_{j+1}, the session / history crossing and the softmax loss are
   computed at every position, as SASRec trains. Nothing after j reaches position j: the backbone is causal, the
   session of j is the k behaviours up to j (a band mask), the history of j the older ones, positions are counted
   from the oldest behaviour of the window (so dropping left padding or cutting a history at j changes nothing),
   and eval-mode noise is keyed by the prefix up to j.
2. **Diffuse only what is unknown.** The generator's x0 is the next behaviour x_{j+1} (``target=item``) or the
   drift x_{j+1} - x_j (``target=drift``), one D-vector per position, conditioned on c_j: the known behaviours are
   condition, never noised (the faithful model noises all n drifts, 49 of which the condition gives away).
3. **No train / inference mismatch.** The tower trains on the x_hat the sampler makes at inference: the same
   sampler from pure noise z_T, the same number of steps (``train_steps`` = ``inference_steps`` by default), with
   gradients through the chain; never on an x_hat built from the target. The denoiser also learns the usual
   x0-prediction loss at a random step (eq. 12–15, 23) so any step count works at inference, and optionally a
   softmax CE of x_hat against the item table (``xhat_ce_weight``, as DiffuRec scores its x0).
4. **Few-step sampling.** ``sampler`` ddim (eta 0, deterministic) visits ``inference_steps`` of the T steps,
   chosen at inference (``set_sampler``) without retraining; ddpm (eq. 17) visits all T.

User vector at position j: e_u(j) = c_j + W [h_s(j); h_l(j)] (W starts at 0, so training starts from the causal
backbone alone), with

- h_s(j): x_hat_{j+1} attends to the session x_{j-k+1..j} (with a learned bias per distance) and to itself, then a
  feed-forward layer (eq. 19, with x_hat as the query rather than a mean);
- h_l(j): h_s(j) attends to the history x_i, i <= j - k, and to a learned null key (no history -> the null value)
  (eq. 20–21, dot-product attention instead of the activation unit, so all positions fit one pass).

With ``xhat_skip`` x_hat also enters directly: e_u(j) = c_j + W [h_s(j); h_l(j)] + U x_hat_{j+1} (U starts at 0).

Scores are e_u . e_i with e_i = the behaviour embedding (id + side features), tied as in SASRec. With
``diffusion: false`` the query of the session attention is c_j itself: the crossing without a generator, the
ablation that says what the diffusion adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, overload

import torch
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.config import ConfigError, at_least, check_attention_sizes, check_fields, choice
from t2diff.diffusion.energy import energy_score
from t2diff.diffusion.keyed_noise import keyed_normal, mix32
from t2diff.diffusion.samplers import SAMPLERS, Sampler, make_sampler
from t2diff.diffusion.schedule import SCHEDULES, NoiseSchedule
from t2diff.losses import Objective, chunked_softmax_ce, mixture_softmax_nll
from t2diff.models.base import CausalEncoder, DataInfo
from t2diff.models.dropout import Dropout
from t2diff.models.layers import SideFeatures, TransformerBlock, TransformerConfig, attention_mask

TARGETS = ("item", "drift")  # what the generator produces: x_{j+1}, or the drift x_{j+1} - x_j (eq. 11)


@dataclass
class T2DiffCausalConfig(TransformerConfig):
    """The backbone's sizes (``TransformerConfig``: hidden, num_blocks, num_heads, ffn_dim, dropout,
    emb_dropout; SASRec's defaults) plus the generator and the crossing."""

    session_len: int = at_least(10)  # k: the last k behaviours up to j are its session, the older ones its history
    diffusion: bool = True  # False: no generator; c_j is the query of the crossing (the ablation)
    target: str = choice("item", TARGETS)
    schedule: str = choice("linear", SCHEDULES)
    steps: int = at_least(50)  # T, the training steps of the denoiser
    sampler: str = choice("ddim", tuple(SAMPLERS))  # the chain that makes x_hat, in training and at inference
    inference_steps: int = at_least(2)  # steps the sampler visits (ddpm: must be T); changeable at inference
    train_steps: int | None = None  # steps of training's chain; None = inference_steps (no mismatch)
    train_sampler: str | None = None  # training's chain; None = sampler (no mismatch)
    eta: float = 0.0  # ddim noise (0: deterministic)
    denoiser_hidden: int = at_least(128)
    denoise_weight: float = 1.0  # x0-prediction loss at a random step (eq. 23)
    xhat_ce_weight: float = 0.0  # softmax CE of x_hat against the item table, as DiffuRec (0: off)
    detach_xhat: bool = False  # stop-gradient between the generator and the crossing
    # K > 1: K independent x_hat draws per position in training, each crossed into its own user vector, and the
    # tower loss is the likelihood of the mixture of their K softmaxes (full softmax only): a generator whose
    # draws differ can cover several next items, where one inner product is one mode. Serving still uses one draw;
    # benchmarks/xhat_mixture.py reads several.
    train_draws: int = at_least(1)
    # > 0: the energy score of the K train draws of x_hat against x_{j+1} (``diffusion.energy``; needs
    # train_draws >= 2), a strictly proper scoring rule: its spread term keeps the draws as different as the next
    # behaviours are given c_j, where the chain trained on squared error and ranking alone collapses to one point.
    energy_weight: float = 0.0
    # x_hat also enters e_u through its own map U (zero at the start): e_u = c_j + W [h_s; h_l] + U x_hat, so draws
    # that differ give user vectors that differ (through the crossing alone they barely do: RESULTS, session 16)
    xhat_skip: bool = False
    eval_seed: int = 0  # eval-mode noise = hash(eval_seed, the prefix up to j, step): batch-independent
    features: bool = True  # add mean-pooled side-feature embeddings to the id embeddings (when the data has them)

    def __post_init__(self) -> None:
        self.validate_config("model")

    def validate_config(self, where: str) -> None:
        check_fields(self, where)
        if self.train_steps is not None and self.train_steps < 1:
            raise ConfigError(f"{where}.train_steps: must be >= 1 (or null), got {self.train_steps}")
        if self.train_sampler is not None and self.train_sampler not in SAMPLERS:
            raise ConfigError(f"{where}.train_sampler: {self.train_sampler!r} is not one of {', '.join(SAMPLERS)}")
        for key, sampler in (("inference_steps", self.sampler), ("train_steps", self.train_sampler or self.sampler)):
            n = getattr(self, key)
            if n is None:
                continue
            if n > self.steps or (sampler == "ddpm" and n != self.steps):
                raise ConfigError(f"{where}.{key}: the {sampler} sampler visits "
                                  f"{'all T' if sampler == 'ddpm' else '1..T'} = {self.steps} steps, got {n}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"{where}.eta: must lie in [0, 1], got {self.eta}")
        if self.xhat_skip and not self.diffusion:
            raise ConfigError(f"{where}.xhat_skip: adds x_hat to the user vector, so it needs diffusion: true")
        if self.energy_weight > 0 and (self.train_draws < 2 or not self.diffusion):
            raise ConfigError(f"{where}.energy_weight: the energy score compares draws, so it needs "
                              f"diffusion: true and train_draws >= 2, got train_draws={self.train_draws}, "
                              f"diffusion={self.diffusion}")
        for key in ("denoise_weight", "xhat_ce_weight", "energy_weight"):
            if not getattr(self, key) >= 0.0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        check_attention_sizes(self, where, ("dropout", "emb_dropout"))


def prefix_keys(seq: Tensor, seed: int) -> Tensor:
    """[B, L] int64: key[b, j] hashes (seed, the real items of row b up to column j, each with its rank from the
    oldest). Left padding adds nothing, so a history keys the same at any width and a history cut at j keys as
    column j of the uncut one. One vectorised pass: the sum mod 2^32 of per-item hashes, prefix by prefix."""
    real = seq > 0
    rank = real.long().cumsum(1)  # [B, L], 1 for the oldest real item
    item = mix32(mix32(seq.long() ^ (int(seed) & 0xFFFFFFFF)) + rank * 0x9E3779B9)  # [B, L]
    acc = (item * real.long()).cumsum(1) & 0xFFFFFFFF  # B x L sums of < 2^32 values: no int64 overflow at L < 2^31
    return mix32(acc ^ mix32(rank + 0x632BE5AB))


class Denoiser(nn.Module):
    """z0_hat = f(z_t, t, c): an MLP on [z_t; c; emb(t)], one D-vector per position (eq. 15 with the condition
    c_j in place of X_{1:n})."""

    def __init__(self, dim: int, hidden: int, steps: int) -> None:
        super().__init__()
        self.t_emb = nn.Embedding(steps + 1, dim)
        self.net = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, z: Tensor, t: Tensor, c: Tensor) -> Tensor:  # z, c [N, D]; t [N] long -> [N, D]
        return self.net(torch.cat([z, c, self.t_emb(t)], dim=-1))


class Crossing(nn.Module):
    """h_s (session attention of the query token) and h_l (history attention of h_s) for the query columns
    ``cols`` of left-padded windows. Keys and values are the behaviour embeddings themselves (as DIN's target
    attention reads them), split into heads; only the queries are projected, so a query costs O(L D) and the
    behaviours need no per-token projection. Dropout acts on the outputs, not on the [Q, L] attention weights
    (drawing those masks cost more than the attention itself, measured)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, k: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.k = heads, k
        self.ln_q = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.dist_bias = nn.Parameter(torch.zeros(heads, k + 1))  # distance 0..k-1 in the session, k = itself
        self.proj = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.ln_h = nn.LayerNorm(dim)
        self.hq = nn.Linear(dim, dim)
        self.hproj = nn.Linear(dim, dim)
        self.null_k = nn.Parameter(torch.zeros(dim))
        self.null_v = nn.Parameter(torch.zeros(dim))
        self.drop = Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:  # [B, N, D] -> [B, H, N, Dh]
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:  # [B, H, N, Dh] -> [B, N, D]
        b, h, n, dh = x.shape
        return x.transpose(1, 2).reshape(b, n, h * dh)

    def forward(self, query: Tensor, x: Tensor, seq: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        """query [B, Q, D] (x_hat_{j+1} for j in cols), x [B, L, D] behaviours, seq [B, L], cols [Q] long
        -> h_s, h_l [B, Q, D]."""
        d = query.shape[-1]
        dh = d // self.heads
        scale = dh ** -0.5
        dist = cols[:, None] - torch.arange(seq.shape[1], device=seq.device)[None, :]  # [Q, L], j - i
        real = (seq > 0)[:, None, :]  # [B, 1, L]
        xk = self._split(x)  # [B, H, L, Dh]: keys and values

        # session: the query attends to its k behaviours (a bias per distance) and to itself
        qh = self._split(self.q(self.ln_q(query))) * scale  # [B, H, Q, Dh]
        s_band = qh @ xk.transpose(-1, -2) + self.dist_bias[:, dist.clamp(0, self.k - 1)][None]  # [B, H, Q, L]
        s_band = s_band.masked_fill(~(real & ((dist >= 0) & (dist < self.k))[None])[:, None], float("-inf"))
        own = self._split(query)  # [B, H, Q, Dh]: the query token's key and value
        s_self = (qh * own).sum(-1, keepdim=True) + self.dist_bias[:, self.k, None, None]  # [B, H, Q, 1]
        a = torch.softmax(torch.cat([s_band, s_self], dim=-1), dim=-1)  # [B, H, Q, L + 1]
        h_s = query + self.drop(self.proj(self._merge(a[..., :-1] @ xk + a[..., -1:] * own)))
        h_s = h_s + self.drop(self.ffn(self.ln_ffn(h_s)))  # [B, Q, D]

        # history: h_s attends to the older behaviours and to a null key (an empty history reads its value)
        qh = self._split(self.hq(self.ln_h(h_s))) * scale
        s_hist = (qh @ xk.transpose(-1, -2)).masked_fill(~(real & (dist >= self.k)[None])[:, None], float("-inf"))
        s_null = (qh * self.null_k.view(self.heads, dh)[None, :, None]).sum(-1, keepdim=True)
        a = torch.softmax(torch.cat([s_hist, s_null], dim=-1), dim=-1)  # [B, H, Q, L + 1]
        h_l = self.hproj(self._merge(a[..., :-1] @ xk + a[..., -1:] * self.null_v.view(self.heads, dh)[None, :, None]))
        return h_s, h_l


class T2DiffCausal(SideFeatures, CausalEncoder, config=T2DiffCausalConfig):
    padding_free = True  # positions count from the oldest real behaviour; padding is masked everywhere

    def __init__(self, cfg: T2DiffCausalConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        cfg.validate_config("model")
        d = cfg.hidden
        self.item_emb = nn.Embedding(info.num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.init_side_features(info, d, cfg.features)
        self.pos_emb = nn.Embedding(info.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.emb_drop = Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.num_blocks))
        self.ln = nn.LayerNorm(d)
        self.k = min(cfg.session_len, info.max_len)
        if cfg.diffusion:
            self.schedule = NoiseSchedule(cfg.schedule, cfg.steps)
            self.sampler: Sampler = make_sampler(cfg.sampler, self.schedule, "std", cfg.inference_steps, cfg.eta)
            self.train_sampler = make_sampler(cfg.train_sampler or cfg.sampler, self.schedule, "std",
                                              cfg.train_steps or cfg.inference_steps, cfg.eta)
            self.denoiser = Denoiser(d, cfg.denoiser_hidden, cfg.steps)
        self.crossing = Crossing(d, cfg.num_heads, cfg.ffn_dim, self.k, cfg.dropout)
        self.out = nn.Linear(2 * d, d)
        nn.init.zeros_(self.out.weight)  # e_u = c_j at the start
        nn.init.zeros_(self.out.bias)
        if cfg.xhat_skip:
            self.skip = nn.Linear(d, d, bias=False)
            nn.init.zeros_(self.skip.weight)  # e_u = c_j at the start, as without it

    # ------------------------------------------------------------------ pieces
    def item_inputs(self, ids: Tensor) -> Tensor:
        """Behaviour embeddings of ids [...] -> [..., D] (id + side features); padding stays 0."""
        x = self.with_side_features(self.item_emb(ids), ids)
        return x * (ids > 0).unsqueeze(-1).to(x.dtype)

    def item_embeddings(self) -> Tensor:  # [I+1, D], tied with the behaviour embeddings
        return self.item_inputs(torch.arange(self.info.num_items + 1, device=self.item_emb.weight.device))

    def _check(self, seq: Tensor) -> None:
        if seq.dim() != 2 or seq.shape[1] > self.info.max_len:
            raise ValueError(f"batch.seq must be [B, L] with L <= max_len={self.info.max_len}, "
                             f"got shape {tuple(seq.shape)}")

    def backbone(self, seq: Tensor, last_only: bool = False) -> tuple[Tensor, Tensor]:
        """x = behaviours [B, L, D] and c = the causal summaries [B, L, D] ([B, 1, D] with ``last_only``)."""
        self._check(seq)
        x = self.item_inputs(seq)
        pos = ((seq > 0).long().cumsum(1) - 1).clamp_min(0)  # [B, L]: rank from the oldest real behaviour
        h = self.emb_drop(x + self.pos_emb(pos)) * (seq > 0).unsqueeze(-1).to(x.dtype)
        allow = attention_mask(seq, causal=True)
        for i, blk in enumerate(self.blocks):
            h = blk(h, allow, last_only=last_only and i == len(self.blocks) - 1)
        return x, self.ln(h)

    def set_sampler(self, name: str, steps: int | None = None) -> None:
        """The inference chain: ``name`` (ddim / ddpm) over ``steps`` of the T steps (None: all T); training's chain
        (``train_steps``) is left alone, so this measures other step counts without retraining."""
        if not self.cfg.diffusion:
            raise ValueError("set_sampler needs a T2DiffCausal model with diffusion: true")
        steps = self.cfg.steps if steps is None else steps
        cfg = replace(self.cfg, sampler=name, inference_steps=steps,  # checks the combination
                      train_sampler=self.cfg.train_sampler or self.cfg.sampler,
                      train_steps=self.cfg.train_steps or self.cfg.inference_steps)
        self.sampler = make_sampler(name, self.schedule, "std", steps, cfg.eta)
        self.cfg = cfg

    @property
    def reverse_steps(self) -> int | None:
        return len(self.sampler.timesteps) if self.cfg.diffusion else None

    def diffusion_x0(self, x_prev: Tensor, x_next: Tensor) -> Tensor:
        """The generator's target from x_j and x_{j+1} [N, D] (detached): the next behaviour or the drift."""
        return x_next if self.cfg.target == "item" else x_next - x_prev

    def utilize(self, z0: Tensor, x_prev: Tensor) -> Tensor:
        """x_hat_{j+1} from the generated z0 [N, D] (eq. 18 for the drift)."""
        return z0 if self.cfg.target == "item" else z0 + x_prev

    def _noise_fn(self, keys: Tensor | None) -> Callable[[int], Tensor] | None:
        if keys is None:
            return None
        return lambda k: keyed_normal(keys, k, (self.cfg.hidden,), self.item_emb.weight.dtype)

    @overload
    def sample_xhat(self, c: Tensor, x_prev: Tensor, keys: Tensor | None, sampler: Sampler | None = None,
                    trace: Literal[False] = False) -> Tensor: ...

    @overload
    def sample_xhat(self, c: Tensor, x_prev: Tensor, keys: Tensor | None, sampler: Sampler | None,
                    trace: Literal[True]) -> tuple[Tensor, list[tuple[int, Tensor]]]: ...

    def sample_xhat(self, c: Tensor, x_prev: Tensor, keys: Tensor | None, sampler: Sampler | None = None,
                    trace: bool = False, states: list[tuple[int, Tensor]] | None = None
                    ) -> Tensor | tuple[Tensor, list[tuple[int, Tensor]]]:
        """x_hat [N, D] by the sampler's chain from z_T ~ N(0, I), conditioned on c [N, D] (x_prev [N, D]: x_j, for
        the drift). ``keys`` [N] key the noise (eval mode); None draws it from the global RNG. ``trace``: also the
        (t, z0_hat) of every visited step; ``states``, if given, receives the chain's state after each step."""
        steps: list[tuple[int, Tensor]] | None = [] if trace else None
        z0 = (sampler or self.sampler).sample(lambda z, t: self.denoiser(z, t, c), tuple(c.shape),
                                              noise_fn=self._noise_fn(keys), device=c.device, dtype=c.dtype,
                                              trace=steps, states=states)
        x_hat = self.utilize(z0, x_prev)
        return (x_hat, steps) if steps is not None else x_hat

    def user_vectors(self, x: Tensor, seq: Tensor, c: Tensor, x_hat: Tensor | None, cols: Tensor) -> Tensor:
        """e_u [B, Q, D] at the columns ``cols`` [Q] from behaviours x [B, L, D], summaries c [B, Q, D] and
        x_hat [B, Q, D] (None: c is the query)."""
        query = c if x_hat is None else (x_hat.detach() if self.cfg.detach_xhat else x_hat)
        h_s, h_l = self.crossing(query, x, seq, cols)
        e_u = c + self.out(torch.cat([h_s, h_l], dim=-1))
        return e_u + self.skip(query) if self.cfg.xhat_skip and x_hat is not None else e_u

    def eval_keys(self, seq: Tensor) -> Tensor | None:
        """[B, L] prefix keys in eval mode; None in training (fresh noise)."""
        return None if self.training else prefix_keys(seq, self.cfg.eval_seed)

    # ------------------------------------------------------------------ interface
    def encode(self, seq: Tensor) -> Tensor:  # [B, L] -> e_u at every position [B, L, D]
        x, c = self.backbone(seq)
        b, l, d = x.shape
        x_hat = None
        if self.cfg.diffusion:
            keys = self.eval_keys(seq)
            x_hat = self.sample_xhat(c.reshape(-1, d), x.reshape(-1, d).detach(),
                                     None if keys is None else keys.reshape(-1)).view(b, l, d)
        return self.user_vectors(x, seq, c, x_hat, torch.arange(l, device=seq.device))

    def user_embeddings(self, batch: Batch) -> Tensor:  # [B, D]: only the last position is computed
        return self.user_embeddings_from(batch, "chain" if self.cfg.diffusion else "none")

    def user_embeddings_from(self, batch: Batch, source: str,
                             x_hat_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
        """e_u [B, D] at the last position with x_hat from ``source``: ``chain`` (the sampler, as served),
        ``none`` (no generator: c_j is the query), ``last-item`` (x_hat = x_n), or ``fn``: ``x_hat_fn(c, x_n)``
        [B, D] (diagnostics' oracles)."""
        if source in ("chain", "fn") and not self.cfg.diffusion:
            raise ValueError(f"x_hat source {source!r} needs a generator (model.diffusion: true)")
        seq = batch.seq
        x, c = self.backbone(seq, last_only=True)  # c [B, 1, D]
        x_prev, cl = x[:, -1].detach(), c[:, 0]
        if source == "chain":
            keys = self.eval_keys(seq)
            x_hat: Tensor | None = self.sample_xhat(cl, x_prev, None if keys is None else keys[:, -1])
        elif source == "none":
            x_hat = None
        elif source == "last-item":
            x_hat = x_prev
        elif source == "fn" and x_hat_fn is not None:
            x_hat = x_hat_fn(cl, x_prev)
        else:
            raise ValueError(f"unknown x_hat source {source!r}: chain, none, last-item or fn (with x_hat_fn)")
        cols = torch.tensor([seq.shape[1] - 1], device=seq.device)
        return self.user_vectors(x, seq, c, None if x_hat is None else x_hat[:, None], cols)[:, 0]

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        seq, tgt = batch.seq, batch.pos_targets
        keep = tgt > 0  # [B, L]
        if not bool(keep.any()):
            raise ValueError("T2DiffCausal.loss needs at least one position with a next item (pos_targets > 0)")
        x, c = self.backbone(seq)  # [B, L, D] each
        b, l, d = x.shape
        logs: dict[str, float] = {}
        x_hat_full, extra = None, x.new_zeros(())
        if self.cfg.diffusion:
            ck, xk = c[keep], x[keep].detach()  # [N, D]
            y = self.item_inputs(tgt[keep]).detach()  # [N, D]: x_{j+1}, a stop-gradient target
            x0 = self.diffusion_x0(xk, y)  # [N, D]
            t = self.schedule.sample_steps(ck.shape[0], device=ck.device)  # eq. 12
            z_t = self.schedule.q_sample(x0, t, torch.randn_like(x0))  # eq. 14
            denoise = (self.denoiser(z_t, t, ck).float() - x0).pow(2).sum(-1).mean()  # eq. 15, 23 (fp32 under bf16)
            x_hat = self.sample_xhat(ck, xk, None, self.train_sampler)  # as at inference, from pure noise
            x_hat_full = x.new_zeros(b, l, d).index_put((keep,), x_hat.to(x.dtype))  # [B, L, D]; 0: no target
            extra = self.cfg.denoise_weight * denoise
            logs["denoise"] = denoise.item()
            if self.cfg.xhat_ce_weight > 0:
                xce = chunked_softmax_ce(x_hat, self.item_embeddings(), tgt[keep])
                extra = extra + self.cfg.xhat_ce_weight * xce
                logs["xhat_ce"] = xce.item()
        cols = torch.arange(l, device=seq.device)
        e_u = self.user_vectors(x, seq, c, x_hat_full, cols)  # [B, L, D]
        if self.cfg.diffusion and self.cfg.train_draws > 1:
            if self.tower_loss_fn is not None:
                raise ValueError("model.train_draws > 1 needs train.loss: full (the mixture likelihood is a full "
                                 "softmax over the catalogue)")
            draws, x_hats = [e_u[keep]], [x_hat]  # [N, D] each
            for _ in range(self.cfg.train_draws - 1):
                more = self.sample_xhat(ck, xk, None, self.train_sampler)
                x_hats.append(more)
                full = x.new_zeros(b, l, d).index_put((keep,), more.to(x.dtype))
                draws.append(self.user_vectors(x, seq, c, full, cols)[keep])
            tower = mixture_softmax_nll(torch.stack(draws), self.item_embeddings(), tgt[keep])
            if self.cfg.energy_weight > 0:
                es = energy_score(torch.stack(x_hats), y)  # [K, N, D] against [N, D]
                extra = extra + self.cfg.energy_weight * es
                logs["energy"] = es.item()
        else:
            tower = self.tower_loss(e_u[keep], tgt[keep])
        total = tower + extra
        return total, {"tower": tower.item(), **logs, "loss": total.item()}

