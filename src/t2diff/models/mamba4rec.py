"""Mamba4Rec (Liu et al., RelKD@KDD'24, arXiv 2403.03900): a selective state-space (Mamba) encoder over the
behaviour sequence; its output after the most recent behaviour is the user embedding.

Layout as the official code (chengkai-liu/Mamba4Rec on RecBole; shared/research/baselines.md §1):
item embedding -> dropout -> LayerNorm, no position embedding; per layer a bare Mamba mixer -> dropout ->
LayerNorm (with ONE layer there is no residual around the mixer; with more, LayerNorm(dropout(mixer) + x)),
then a GELU feed-forward network with dropout and a residual LayerNorm. LayerNorm eps 1e-12 (RecBole's).
Scores are dot products with the tied item table, and training is full-softmax CE at every position (the
official trains one CE per prefix, RecBole's prefix augmentation: the same (prefix, target) pairs up to the
truncation of users with more than max_len items).

The mixer and its selective scan are ``mambapy`` (pure PyTorch; ``MambaBlock`` is the same mixer as
mamba-ssm's ``Mamba``: same parameters and shapes). Its Blelloch parallel scan is the default: measured
3-4x faster than a hand-written sequential scan with its own backward, and faster than mambapy's
sequential loop in training and at inference (2-core CPU, hidden 64, d_state 32, L 50 / 200).

Init (``official_init``): the official applies N(0, 0.02) with zero bias to every nn.Linear and nn.Embedding
AFTER building the mixers, so it overwrites the mixer's Δ init too: dt_proj's bias becomes 0, i.e. an initial
Δ = softplus(0) ~ 0.69 instead of Mamba's [0.001, 0.1]. ``official_init = False`` keeps mambapy's dt_proj
init (uniform weight, inverse-softplus bias of Δ ~ logU[0.001, 0.1]) and re-inits everything else alike.
A_log (log 1..N), D (1) and the conv keep the mixer's own init in both cases, as in the official.

Left padding: a Mamba mixer is not padding-neutral (the conv bias, and once trained the embedding LayerNorm's
bias, make padding inputs non-zero, which moves the state), so a history would encode differently depending
on the padding before it. We roll every row so its items start at column 0 (RecBole's right padding: the
causal conv sees zeros before the first item, and the state starts at 0 there), run the layers, and roll back;
padding positions output 0. The ONNX export runs mambapy's sequential scan (``MambaLayer.forward``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mambapy.mamba import MambaBlock, MambaConfig
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.config import ConfigError, at_least, check_fields, choice
from t2diff.losses import Objective
from t2diff.models.base import CausalEncoder, DataInfo
from t2diff.models.dropout import Dropout

SCANS = ("parallel", "sequential")  # mambapy's Blelloch pscan, or its Python loop over time


@dataclass
class Mamba4RecConfig:
    """Defaults = the official ML-1M config.yaml: hidden 64, 1 layer, dropout 0.2, d_state 32, d_conv 4,
    expand 2 (its max_len 200 is data.max_len: configs/ml-1m/mamba4rec-200.yaml)."""

    hidden: int = at_least(64)  # d_model = item / user vector size D
    num_layers: int = at_least(1)
    d_state: int = at_least(32)  # N, SSM state size per channel
    d_conv: int = at_least(4)  # causal depthwise conv kernel
    expand: int = at_least(2)  # inner width ED = expand * hidden
    ffn_dim: int | None = None  # None = 4 * hidden (the official inner_size)
    dropout: float = 0.2  # embeddings, mixer output, FFN (the official dropout_prob)
    official_init: bool = True  # N(0, 0.02) / zero bias on every Linear incl. dt_proj (see the module docstring)
    scan: str = choice("parallel", SCANS)

    def __post_init__(self) -> None:
        self.validate_config("model")

    def validate_config(self, where: str) -> None:
        check_fields(self, where)
        if self.ffn_dim is not None and self.ffn_dim < 1:
            raise ConfigError(f"{where}.ffn_dim: must be >= 1 (or null = 4 * hidden), got {self.ffn_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: must lie in [0, 1), got {self.dropout}")


class MambaLayer(nn.Module):
    """Mixer -> dropout -> LayerNorm (residual only when stacked), then a residual GELU FFN -> LayerNorm."""

    def __init__(self, cfg: Mamba4RecConfig, residual: bool) -> None:
        super().__init__()
        d = cfg.hidden
        self.residual = residual
        self.parallel = cfg.scan == "parallel"
        self.mixer = MambaBlock(MambaConfig(d_model=d, n_layers=1, d_state=cfg.d_state, expand_factor=cfg.expand,
                                            d_conv=cfg.d_conv, pscan=self.parallel))
        self.drop = Dropout(cfg.dropout)
        self.ln = nn.LayerNorm(d, eps=1e-12)
        f = cfg.ffn_dim or 4 * d
        self.ffn = nn.Sequential(nn.Linear(d, f), nn.GELU(), Dropout(cfg.dropout), nn.Linear(f, d),
                                 Dropout(cfg.dropout))
        self.ffn_ln = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, L, D]
        # mambapy's parallel scan updates views in place, which torch.onnx.export (TorchScript tracer) converts
        # wrongly: the exported pscan drops its decay input (measured: O(1) errors on the bare scan, 7e-5 on an
        # untrained tiny model). Its sequential loop exports exactly (~1e-6), so an export runs that one;
        # mambapy reads config.pscan at every call.
        self.mixer.config.pscan = self.parallel and not torch.jit.is_tracing()
        h = self.drop(self.mixer(x))
        h = self.ln(h + x if self.residual else h)
        return self.ffn_ln(self.ffn(h) + h)


def _roll_rows(x: Tensor, shift: Tensor) -> Tensor:
    """out[b, j] = x[b, (j + shift[b]) % L] for x [B, L, ...]; shift [B] long in [-L, L]."""
    b, l = x.shape[:2]
    # + L keeps the operand of % non-negative: no reliance on floor-mod semantics in an exported graph
    idx = (torch.arange(l, device=x.device)[None, :] + shift[:, None] + l) % l  # [B, L]
    return x.gather(1, idx.view(b, l, *([1] * (x.dim() - 2))).expand_as(x))


class Mamba4Rec(CausalEncoder, config=Mamba4RecConfig, paper_row="Mamba4Rec"):
    # items are rolled to column 0 whatever the window width, so leading all-padding columns change nothing
    padding_free = True

    def __init__(self, cfg: Mamba4RecConfig, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__(cfg, info, objective)
        cfg.validate_config("model")
        d = cfg.hidden
        self.item_emb = nn.Embedding(info.num_items + 1, d, padding_idx=0)
        self.emb_drop = Dropout(cfg.dropout)
        self.emb_ln = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(MambaLayer(cfg, residual=cfg.num_layers > 1) for _ in range(cfg.num_layers))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        keep = set() if self.cfg.official_init else {id(layer.mixer.dt_proj) for layer in self.layers}
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding) and id(m) not in keep:
                m.weight.normal_(0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        self.item_emb.weight[0].zero_()  # the padding row (never ranked; it only reaches masked positions)

    def _encode_items_first(self, seq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """seq [B, L] left-padded -> (h [B, L, D] with each row's items rolled to columns 0..n-1, n [B], shift [B])."""
        n = (seq > 0).sum(1)  # [B] real items per row (left-padded: the last n columns)
        shift = seq.shape[1] - n  # [B] padding columns
        x = self.item_emb(_roll_rows(seq, shift))  # [B, L, D], items first, padding after them
        x = self.emb_ln(self.emb_drop(x))
        for layer in self.layers:
            x = layer(x)  # causal: the padding after a row's items never reaches them
        return x, n, shift

    def encode(self, seq: Tensor) -> Tensor:  # seq [B, L] -> [B, L, D], 0 at padding positions
        h, _, shift = self._encode_items_first(seq)
        return _roll_rows(h, -shift) * (seq > 0).unsqueeze(-1).to(h.dtype)  # back to left padding

    def user_embeddings(self, batch: Batch) -> Tensor:  # [B, D] = encode(seq)[:, -1]
        # read at column n - 1 instead of rolling h back: less work, and the exported ONNX graph keeps a static
        # output width D (the ONNX user tower reads it from the graph; the roll's gather makes it symbolic)
        h, n, _ = self._encode_items_first(batch.seq)
        last = h[torch.arange(h.shape[0], device=h.device), (n - 1).clamp(min=0)]  # [B, D], the newest item
        return last * (n > 0).unsqueeze(-1).to(h.dtype)  # an all-padding row -> 0, as encode
