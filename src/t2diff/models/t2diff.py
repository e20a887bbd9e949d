"""T2Diff (Wang et al., WWW '25): a two-tower matcher whose user tower restores the next behaviour with a
diffusion module (§4.2) and crosses it with the session and the history in a mixed-attention module (§4.3).

User tower, for a left-padded sequence X_{1:n} (n = max_len, most recent last):

1. Diffusion (Alg. 1 in training, Alg. 2 at inference) -> x_hat_{n+1}, on inputs detached from the embedding
   table; only L_KL trains the U-Net (stop-gradient, Fig. 2a).
2. h_s = mean(Transformer([X_session; x_hat_{n+1}])) over non-padding tokens (eq. 19).
3. h_l = sum_j a_j x_j over the older history, a = softmax over non-padding positions of an activation unit on
   [x_j, x_j - h_s, x_j * h_s, h_s] (+ a bucketised time-lag embedding when timestamps exist) (eq. 20–21).
4. e_u = FFN([h_l; h_s]) (eq. 22), or the plain concat (``attention.user_ffn=False``, the authors' choice).

Item tower: id embedding (+ mean-pooled side-feature embeddings) through an MLP -> e_i. The same id(+feature)
vectors are the behaviour embeddings X of the user tower. Scores are e_u . e_i.

Objective: L = L_TOWER + lambda * L_KL (eq. 24–25).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, ClassVar, Literal, overload

import torch
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.config import ConfigError, at_least, check_fields, choice
from t2diff.data.sessions import session_mask
from t2diff.diffusion.keyed_noise import keyed_normal, row_keys
from t2diff.diffusion.samplers import REVERSE_NOISE, SAMPLERS, make_sampler
from t2diff.diffusion.schedule import SCHEDULES, NoiseSchedule
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.models.dropout import Dropout
from t2diff.models.layers import SideFeatures, TransformerBlock
from t2diff.models.unet1d import PADDING_MODES, TIME_EMBS, UNet1D

# ---------------------------------------------------------------------------------------------------- config
# The model section is nested: model.hidden plus one section per module (model.diffusion.steps, model.unet.levels,
# ...). A field's allowed values sit next to it (``choice``: each set declared once, here or by the module that
# implements it; ``_at_least``) and are checked whenever a config is built, in Python or by the loader, with the
# dotted key in the message; ``validate_config`` (the loader's hook) adds the rules across fields. The flat keys
# of the layout before the sections (model.steps, model.diffusion=false, ...) still work: see LEGACY_KEYS.


class _Section:
    """A section of the model config; ``KEY`` is its name under ``model``. Checked on construction."""

    KEY: ClassVar[str]

    def __post_init__(self) -> None:
        self.validate_config(f"model.{self.KEY}")

    def validate_config(self, where: str) -> None:
        check_fields(self, where)


@dataclass
class DiffusionConfig(_Section):
    """The diffusion module (§4.2, Alg. 1–2). With ``enabled=False`` the other keys here are unused."""

    KEY: ClassVar[str] = "diffusion"
    enabled: bool = True  # False = "mixed-attention only" ablation (no x_hat in the session)
    drift: bool = True  # False = "W/O DP" ablation: diffuse X_{2:n+1} itself instead of the drift (eq. 11)
    schedule: str = choice("exp", SCHEDULES)  # exp | linear | log (Table 3; formulas in diffusion.schedule)
    steps: int = at_least(50)  # T (Table 4: 10 / 50 / 200)
    beta_a: float = 0.01  # exp schedule: beta_r = a * exp(b * r / T) (eq. 13)
    beta_b: float = 4.5
    beta_start: float | None = None  # linear / log endpoints (None: DDPM's, scaled by 1000 / T)
    beta_end: float | None = None
    max_beta: float = 0.999  # cap on every beta_r, in (0, 1)
    sampler: str = choice("ddpm", tuple(SAMPLERS))  # the reverse chain at inference (diffusion.samplers); ddpm: Alg. 2
    inference_steps: int | None = None  # steps the sampler visits (None: all T; ddim may visit fewer)
    # reverse-step noise scale: std = sqrt(beta_tilde) (eq. 4) | var = beta_tilde as eq. 17 prints it (authors)
    reverse_noise: str = choice("std", REVERSE_NOISE)
    # eval mode: the reverse chain's noise is a hash of (eval_seed, the user's history, step), so a user gets the
    # same x_hat in any batch position or batch size (serve == retrieve); None: the global torch RNG
    eval_seed: int | None = 0

    def validate_config(self, where: str) -> None:
        super().validate_config(where)
        if not 0.0 < self.max_beta < 1.0:
            raise ConfigError(f"{where}.max_beta: must lie in (0, 1), got {self.max_beta}")
        n = self.inference_steps
        if n is not None and not (1 <= n <= self.steps and (self.sampler != "ddpm" or n == self.steps)):
            raise ConfigError(f"{where}.inference_steps: the {self.sampler} sampler visits "
                              f"{'all T' if self.sampler == 'ddpm' else '1..T'} = {self.steps} steps, got {n}")


KL_LOSSES = ("mse", "l2")  # mse: ||z0_hat - z0||^2 (eq. 23) | l2: the un-squared norm (authors)
# all: every one of the n drift positions (eq. 23, paper) | last: only d_n = x_{n+1} - x_n, the one the condition
# X_{1:n} does not reveal (every earlier d_j is readable from it, see RESULTS.md)
KL_POSITIONS = ("all", "last")


@dataclass
class ObjectiveConfig(_Section):
    """L = L_TOWER + lambda * L_KL (eq. 23–25) and the stop-gradients between the two parts (Fig. 2a)."""

    KEY: ClassVar[str] = "objective"
    kl_weight: float = 1.0  # lambda (paper 1 or 10, authors 0.1 on ML-1M / 10 on KuaiRand)
    kl_loss: str = choice("mse", KL_LOSSES)
    kl_mask_padding: bool = True  # average L_KL only where X_{j+1} is a real item (False: all positions)
    kl_positions: str = choice("all", KL_POSITIONS)
    detach_xhat: bool = True  # stop-gradient between x_hat_{n+1} and the mixed-attention module (Fig. 2a)


@dataclass
class UNetConfig(_Section):
    """The 1-D U-Net approximator z0_hat = f(concat([z_t, X_{1:n}]), t) (eq. 15–16, models.unet1d)."""

    KEY: ClassVar[str] = "unet"
    levels: int = at_least(4)
    base_channels: int = at_least(0, 0)  # 0: = model.hidden
    channel_mult: int = at_least(2)
    convs_per_level: int = at_least(1)
    padding: str = choice("reflect", PADDING_MODES)  # zeros | reflect | replicate | circular
    time_emb: str = choice("sinusoidal", TIME_EMBS)  # sinusoidal (paper) | authors (0.01 sin(t / 2^f) on the input)
    final_proj: bool = True  # a last 1x1 projection (False, authors: the output is the last block's layer norm)


@dataclass
class AttentionConfig(_Section):
    """The mixed-attention module (§4.3): session encoder (eq. 19), target attention over the history
    (eq. 20–21) and the user FFN (eq. 22)."""

    KEY: ClassVar[str] = "attention"
    session_len: int = at_least(10)  # k: the last k behaviours form the session, the older ones the history
    # with timestamps: the session also ends at the last gap longer than this many seconds (DESIGN §1, the
    # paper's time-gap sessions); behaviours before the gap go to the history. None: last k only.
    session_gap: int | None = None
    heads: int = at_least(2)  # session encoder heads (must divide model.hidden)
    layers: int = at_least(1)  # session encoder blocks
    ffn_dim: int = 256  # session encoder feed-forward width
    mask_diag: bool = False  # authors: a token may not attend to itself
    pos_emb: bool = False  # learned positions in the session encoder (neither paper nor authors)
    dropout: float = 0.1  # session encoder and user FFN
    din_hidden: int = 64  # activation unit of the target attention (Fig. 3)
    use_time: bool = True  # time-lag feature in the target attention (only when the data has timestamps)
    time_buckets: int = at_least(32)  # bucket = floor(log2(1 + lag seconds)), capped
    time_emb_dim: int = 16
    user_ffn: bool = True  # eq. 22; False: e_u = [h_l; h_s] (authors), item vectors are then 2D wide
    user_ffn_hidden: int = 256

    def validate_config(self, where: str) -> None:
        super().validate_config(where)
        if not 0.0 <= self.dropout <= 1.0:
            raise ConfigError(f"{where}.dropout: must lie in [0, 1], got {self.dropout}")


@dataclass
class ItemTowerConfig(_Section):
    """Item tower: id embedding (+ mean-pooled side features) through an MLP -> e_i."""

    KEY: ClassVar[str] = "item_tower"
    features: bool = True  # add the mean-pooled side-feature embeddings (when the data has item features)
    mlp_hidden: int = 128


_SECTIONS: dict[str, type[_Section]] = {
    c.KEY: c for c in (DiffusionConfig, ObjectiveConfig, UNetConfig, AttentionConfig, ItemTowerConfig)
}

# legacy flat key (the layout before the sections; still accepted in YAML files, checkpoints, CLI overrides and
# T2DiffConfig(...) / dataclasses.replace keywords) -> (section, key). ``diffusion`` is special: a bool where the
# section is expected means diffusion.enabled.
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "diffusion": ("diffusion", "enabled"),
    **{k: ("diffusion", k) for k in ("drift", "schedule", "steps", "beta_a", "beta_b", "beta_start", "beta_end",
                                     "max_beta", "reverse_noise", "eval_seed")},
    **{k: ("objective", k) for k in ("kl_weight", "kl_loss", "kl_mask_padding", "kl_positions", "detach_xhat")},
    **{f"unet_{k}": ("unet", k) for k in ("levels", "base_channels", "channel_mult", "convs_per_level", "padding",
                                          "time_emb", "final_proj")},
    **{k: ("attention", k) for k in ("session_len", "session_gap", "dropout", "din_hidden", "use_time",
                                     "time_buckets", "time_emb_dim", "user_ffn", "user_ffn_hidden")},
    "num_heads": ("attention", "heads"),
    "session_layers": ("attention", "layers"),
    "session_ffn_dim": ("attention", "ffn_dim"),
    "session_mask_diag": ("attention", "mask_diag"),
    "session_pos_emb": ("attention", "pos_emb"),
    "use_item_features": ("item_tower", "features"),
    "item_mlp_hidden": ("item_tower", "mlp_hidden"),
}


@dataclass(init=False)
class T2DiffConfig:
    """T2Diff's model section: the width D and one section per module. Build it with nested values
    (``T2DiffConfig(diffusion=DiffusionConfig(steps=10))`` or ``diffusion={"steps": 10}``) or with the legacy
    flat keywords (``T2DiffConfig(steps=10)``, see ``LEGACY_KEYS``); every rule is checked on construction."""

    hidden: int = at_least(64)  # D, item embedding dim (and user vector dim when attention.user_ffn)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    item_tower: ItemTowerConfig = field(default_factory=ItemTowerConfig)

    @classmethod
    def upgrade_config(cls, section: Mapping[str, Any]) -> dict[str, Any]:
        """Map the legacy flat keys of a T2Diff model section into the nested layout; nested keys (and every other
        key, e.g. ``name``) are left alone, so this is idempotent. A flat key given together with its nested
        counterpart wins (CLI overrides such as ``model.steps=10`` land flat on a nested YAML). A section may be a
        mapping (YAML) or an instance (``T2DiffConfig(...)`` / ``dataclasses.replace``); ``diffusion: false`` becomes
        ``diffusion: {enabled: false}`` (the section's other keys are then unused)."""
        out = dict(section)
        if isinstance(out.get("diffusion"), bool):
            out["diffusion"] = {"enabled": out["diffusion"]}
        moved: dict[str, dict[str, Any]] = {}
        for old, (sec, key) in LEGACY_KEYS.items():
            if old in out and old != "diffusion":  # the flat bool was handled above: its name is the section's
                moved.setdefault(sec, {})[key] = out.pop(old)
        for sec, values in moved.items():
            cur = out.get(sec)
            if cur is None:
                out[sec] = values
            elif isinstance(cur, Mapping):
                out[sec] = {**cur, **values}
            elif is_dataclass(cur) and not isinstance(cur, type):
                out[sec] = replace(cur, **values)
            # anything else is left for the loader to reject ("expected a mapping")
        return out

    def __init__(self, **kw: Any) -> None:
        kw = self.upgrade_config(kw)
        for f in fields(self):
            if f.name in kw:
                value = kw.pop(f.name)
            else:
                value = f.default_factory() if f.default_factory is not MISSING else f.default
            if f.name in _SECTIONS and isinstance(value, Mapping):
                value = _SECTIONS[f.name](**value)
            setattr(self, f.name, value)
        if kw:
            valid = sorted({f.name for f in fields(self)} | set(LEGACY_KEYS))
            raise TypeError(f"T2DiffConfig: unknown key(s) {sorted(kw)}; valid keys are {valid}")
        self.validate_config()

    def validate_config(self, where: str = "model") -> None:
        """Every section's rules, then the rules across sections; ``where`` is the section's dotted key."""
        check_fields(self, where)
        for key, cls in _SECTIONS.items():
            sec = getattr(self, key)
            if not isinstance(sec, cls):
                raise ConfigError(f"{where}.{key}: expected a mapping of {cls.__name__} keys, got {sec!r}")
            sec.validate_config(f"{where}.{key}")
        att, unet = self.attention, self.unet
        if self.hidden % att.heads:
            raise ConfigError(f"{where}.attention.heads: {att.heads} does not divide {where}.hidden={self.hidden}")
        if not unet.final_proj and unet.base_channels not in (0, self.hidden):
            raise ConfigError(f"{where}.unet.final_proj: false needs {where}.unet.base_channels 0 or "
                              f"{where}.hidden ({self.hidden}), got {unet.base_channels}")


class T2Diff(SideFeatures, SeqRecModel):
    """T2Diff user tower + item tower.

    Input rules (``batch.seq`` [B, L] left-padded with 0, most recent last; ``batch.target`` [B]):

    - ``L`` must equal ``info.max_len``, else ``ValueError`` (truncating longer histories is the caller's
      job, e.g. ``Batch.from_histories``).
    - Session = the last ``attention.session_len`` columns, history = the older ones. A history that is all padding
      (short user) gives ``h_l = 0``; an all-padding sequence gives finite embeddings (the session is then
      x_hat alone, or empty, which pools to 0).
    - ``loss`` needs every ``batch.target`` > 0 (``ValueError`` otherwise); ``user_embeddings`` ignores it.
    - Time lags use ``seq_time`` / ``target_time`` only where ``info.has_time`` and both are > 0; an unknown
      time (0) falls in a dedicated "unknown" bucket.
    - Inference runs the reverse chain (Alg. 2) with the sampler ``diffusion.sampler`` (``ddpm``: all T steps),
      in ``sample_xhat``. In eval mode its noise is keyed by (``diffusion.eval_seed``, the row's item ids, step)
      (``diffusion.keyed_noise``), so a history gets the same embedding whatever its row, batch size or device;
      with ``eval_seed=None`` the global RNG is used.
    """

    Config = T2DiffConfig
    causal = False
    PAPER_ROW = "T2Diff"

    @classmethod
    def upgrade_config(cls, section: dict[str, Any]) -> dict[str, Any]:
        """The model section with its legacy flat keys mapped into the nested layout
        (``T2DiffConfig.upgrade_config``); the config loader calls it before building ``Config`` (old YAML files,
        checkpoints, CLI overrides)."""
        return T2DiffConfig.upgrade_config(section)

    @classmethod
    def paper_row(cls, cfg: T2DiffConfig) -> str | None:
        """Table 2: the ablations by their switches; None for kl_positions=last (ours, not in the paper)."""
        if not cfg.diffusion.enabled:
            return "Mixed-attention"
        if cfg.objective.kl_positions != "all":
            return None
        return "T2Diff" if cfg.diffusion.drift else "W/O DP"

    def __init__(self, cfg: T2DiffConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        cfg.validate_config()
        d = cfg.hidden
        dif, unet, att = cfg.diffusion, cfg.unet, cfg.attention
        self.item_emb = nn.Embedding(info.num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

        # side features: [I+1, F] long tokens, 0 = none; mean-pooled embeddings added to the id embedding
        self.init_side_features(info, d, cfg.item_tower.features)

        # diffusion module (§4.2): the schedule holds the noise math (buffers, not saved), the sampler the
        # reverse chain (no state)
        if dif.enabled:
            self.schedule = NoiseSchedule(dif.schedule, dif.steps, a=dif.beta_a, b=dif.beta_b,
                                          beta_start=dif.beta_start, beta_end=dif.beta_end, max_beta=dif.max_beta)
            self.sampler = make_sampler(dif.sampler, self.schedule, dif.reverse_noise, dif.inference_steps)
            self.unet = UNet1D(d, d, d, levels=unet.levels, base_channels=unet.base_channels or d,
                               channel_mult=unet.channel_mult, padding_mode=unet.padding, time_emb=unet.time_emb,
                               steps=dif.steps, final_proj=unet.final_proj, convs_per_level=unet.convs_per_level)

        # mixed-attention module (§4.3)
        self.k = min(att.session_len, info.max_len)
        self.session_pos = nn.Embedding(self.k + 1, d) if att.pos_emb else None
        self.session_drop = Dropout(att.dropout)
        self.session_blocks = nn.ModuleList(
            TransformerBlock(d, att.heads, att.ffn_dim, att.dropout) for _ in range(att.layers)
        )
        self.session_ln = nn.LayerNorm(d)
        self.use_time = att.use_time and info.has_time
        tdim = att.time_emb_dim if self.use_time else 0
        if self.use_time:
            self.time_emb = nn.Embedding(att.time_buckets + 1, tdim, padding_idx=0)  # bucket 0 = unknown
        self.din = nn.Sequential(nn.Linear(4 * d + tdim, att.din_hidden), nn.GELU(),
                                 nn.Linear(att.din_hidden, 1))  # activation unit (Fig. 3)
        if att.user_ffn:
            self.user_mlp = nn.Sequential(nn.Linear(2 * d, att.user_ffn_hidden), nn.GELU(),
                                          Dropout(att.dropout), nn.Linear(att.user_ffn_hidden, d))
        self.out_dim = d if att.user_ffn else 2 * d  # item vectors must match the user vector width

        # item tower
        self.item_mlp = nn.Sequential(nn.Linear(d, cfg.item_tower.mlp_hidden), nn.GELU(),
                                      nn.Linear(cfg.item_tower.mlp_hidden, self.out_dim))

    def set_sampler(self, name: str, steps: int | None = None) -> None:
        """Swap the inference sampler (no retraining: the approximator is trained on all T steps), e.g.
        ``set_sampler("ddim", 5)``; ``steps`` None = all T. Updates the config so a re-export records it."""
        if not self.cfg.diffusion.enabled:
            raise ValueError("set_sampler needs a model with a diffusion module")
        dif = replace(self.cfg.diffusion, sampler=name, inference_steps=steps)  # checks the combination
        self.sampler = make_sampler(name, self.schedule, dif.reverse_noise, steps)
        self.cfg = replace(self.cfg, diffusion=dif)

    @property
    def reverse_steps(self) -> int | None:
        """How many approximator calls one inference makes (the sampler's visited steps); None without
        diffusion."""
        return len(self.sampler.timesteps) if self.cfg.diffusion.enabled else None

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
        return x_shift - xd if self.cfg.diffusion.drift else x_shift  # eq. 11 drift d_{1:n}; W/O DP: X_{2:n+1}

    def utilize(self, z0: Tensor, xd: Tensor) -> Tensor:
        """x_hat_{n+1} = Slice(z0 + X_{1:n}) (eq. 18); W/O DP: Slice(z0). [B, L, D] -> [B, D]"""
        return (z0 + xd)[:, -1] if self.cfg.diffusion.drift else z0[:, -1]

    def approximate(self, z_t: Tensor, xd: Tensor, t: Tensor) -> Tensor:
        """z0_hat = U-Net(concat([z_t, X_{1:n}]), t) (eq. 15–16)."""
        return self.unet(z_t, xd, t)

    def kl_mask(self, batch: Batch) -> Tensor:
        """[B, L] float: positions j whose X_{j+1} is a real item (all ones when objective.kl_mask_padding is
        off); with ``objective.kl_positions=last`` only the last column (the drift to the unknown x_{n+1})."""
        nxt = torch.cat([batch.seq[:, 1:], batch.target[:, None]], dim=1) > 0  # [B, L]
        mask = nxt.float() if self.cfg.objective.kl_mask_padding else torch.ones_like(nxt, dtype=torch.float)
        if self.cfg.objective.kl_positions == "last":
            mask[:, :-1] = 0.0
        return mask

    def kl_loss(self, z0_hat: Tensor, z0: Tensor, mask: Tensor) -> Tensor:
        """L_KL (eq. 23): squared error summed over features (``mse``) or its square root (``l2``, authors),
        averaged over the masked positions of the batch."""
        sq = (z0_hat - z0).pow(2).sum(-1)  # [B, L]
        err = sq if self.cfg.objective.kl_loss == "mse" else sq.clamp_min(1e-12).sqrt()
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
        """A generator freshly seeded with ``diffusion.eval_seed`` (eval mode only); None means the global RNG."""
        seed = self.cfg.diffusion.eval_seed
        if self.training or seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        return g

    def chain_noise(self, seq: Tensor, dtype: torch.dtype) -> Callable[[int], Tensor] | None:
        """Eval mode with ``diffusion.eval_seed``: noise_fn(k) -> [B, L, D] keyed by each row's ids
        (keyed_noise); else None (the global RNG)."""
        seed = self.cfg.diffusion.eval_seed
        if self.training or seed is None:
            return None
        keys = row_keys(seq, int(seed))  # [B]
        shape = (seq.shape[1], self.cfg.hidden)
        return lambda k: keyed_normal(keys, k, shape, dtype)

    @overload
    def sample_xhat(self, x: Tensor, seq: Tensor, trace: Literal[False] = False) -> Tensor: ...

    @overload
    def sample_xhat(self, x: Tensor, seq: Tensor, trace: Literal[True]) -> tuple[Tensor, list[tuple[int, Tensor]]]: ...

    def sample_xhat(self, x: Tensor, seq: Tensor, trace: bool = False,
                    states: list[tuple[int, Tensor]] | None = None
                    ) -> Tensor | tuple[Tensor, list[tuple[int, Tensor]]]:
        """Alg. 2, what inference feeds the mixed-attention module: the sampler's reverse chain from z_T ~ N(0, I)
        conditioned on the behaviours x = ``item_inputs(seq)`` [B, L, D] (detached here, Fig. 2a) of the ids
        ``seq`` [B, L] (they key the eval-mode noise), then x_hat_{n+1} = Slice(z0 + X_{1:n}) (eq. 18) [B, D].

        With ``trace=True`` also returns the approximator's z0_hat [B, L, D] at every visited step, as
        ``(t, z0_hat)`` pairs in chain order (t = T first); ``states``, if given, receives the chain's state z
        [B, L, D] after each step."""
        if not self.cfg.diffusion.enabled:
            raise ValueError("sample_xhat needs a T2Diff model with diffusion.enabled")
        xd = x.detach()
        steps: list[tuple[int, Tensor]] | None = [] if trace else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.objective.detach_xhat):
            z0 = self.sampler.sample(lambda z, t: self.approximate(z, xd, t), tuple(xd.shape),
                                     noise_fn=self.chain_noise(seq, xd.dtype), device=xd.device, dtype=xd.dtype,
                                     trace=steps, states=states)
            x_hat = self.utilize(z0, xd)  # eq. 18
        return (x_hat, steps) if steps is not None else x_hat

    # ------------------------------------------------------------------ mixed-attention module (§4.3)
    def _session_allow(self, valid: Tensor) -> Tensor:
        """[B, 1, S, S] attention mask: keys must be real tokens; optionally not the query itself. A row left
        with no key (a padding query, or a lone token with the diagonal masked) falls back to itself."""
        s = valid.shape[1]
        eye = torch.eye(s, dtype=torch.bool, device=valid.device)
        allow = valid[:, None, None, :].expand(-1, 1, s, -1)  # [B, 1, S, S]
        if self.cfg.attention.mask_diag:
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
            bucket = torch.floor(torch.log2(1.0 + lag)).long().clamp(0, self.cfg.attention.time_buckets - 1) + 1
            feats.append(self.time_emb(torch.where(known, bucket, torch.zeros_like(bucket))))  # [B, H, Dt]
        scores = self.din(torch.cat(feats, dim=-1)).squeeze(-1)  # [B, H]
        scores = scores.masked_fill(~mh, torch.finfo(scores.dtype).min)
        a = torch.softmax(scores, dim=-1) * mh.to(scores.dtype)  # eq. 20; an all-padding row -> all zeros
        return (a.unsqueeze(-1) * xh).sum(1)  # eq. 21

    def mixed_attention(self, x: Tensor, batch: Batch, x_hat: Tensor | None) -> Tensor:
        """The user vector from the behaviours x = ``item_inputs(batch.seq)`` [B, L, D] and x_hat_{n+1} [B, D]
        (None: no x_hat token, the "Mixed-attention" ablation) -> e_u [B, out_dim] (eq. 19–22)."""
        seq = batch.seq
        n = seq.shape[1]
        gap = self.cfg.attention.session_gap if self.info.has_time else None
        in_session = session_mask(seq, batch.seq_time, self.k, gap)  # [B, L] bool
        xs, ms = x[:, n - self.k:], in_session[:, n - self.k:]  # X_session [B, k, D], [B, k]
        if x_hat is not None:
            if self.cfg.objective.detach_xhat:
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
        return self.user_mlp(u) if self.cfg.attention.user_ffn else u  # eq. 22

    # ------------------------------------------------------------------ interface
    def forward_train(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Training forward (Alg. 1 + §4.3): user vectors [B, out_dim] and L_KL (0 without diffusion)."""
        self._check(batch)
        x = self.item_inputs(batch.seq)  # [B, L, D]
        x_hat, kl = None, x.new_zeros(())
        if self.cfg.diffusion.enabled:
            x_hat, kl = self._diffuse_train(x.detach(), batch)  # inputs detached (Fig. 2a)
        return self.mixed_attention(x, batch, x_hat), kl

    def user_embeddings(self, batch: Batch) -> Tensor:  # [B, out_dim]
        self._check(batch)
        x = self.item_inputs(batch.seq)  # [B, L, D]
        x_hat = self.sample_xhat(x, batch.seq) if self.cfg.diffusion.enabled else None  # Alg. 2
        return self.mixed_attention(x, batch, x_hat)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        if bool((batch.target <= 0).any()):
            raise ValueError("T2Diff.loss needs a real next item (> 0) in every batch.target")
        user_vecs, kl = self.forward_train(batch)
        tower = self.tower_loss(user_vecs, batch.target)  # eq. 24
        total = tower + self.cfg.objective.kl_weight * kl if self.cfg.diffusion.enabled else tower  # eq. 25
        return total, {"tower": tower.item(), "kl": float(kl.item()), "loss": total.item()}
