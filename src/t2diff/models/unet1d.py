"""1-D U-Net approximator of T2Diff's diffusion module (paper §4.2, eq. 15–16, Fig. 2b).

It runs over the sequence axis: the input is ``concat([z_t, X_{1:n}])`` on the feature axis (eq. 15) and the
output is ``z0_hat`` (the network predicts z0, not the noise). Each level is a kernel-3 convolution, swish and
layer norm over channels; the encoder max-pools by 2, the decoder upsamples by 2, applies a 1x1 conv + swish,
concatenates the skip connection and runs a kernel-3 block. Channels double per level by default
(``base * mult^i``), as in the authors' code (base = embedding dim, 4 levels).

Differences from the authors' TF code (kept as options where they matter): they use 'valid' convolutions on a
reflect-padded input and crop the skips; we use 'same' convolutions with a configurable ``padding_mode``
(zeros / reflect / replicate / circular) and pad the sequence to a multiple of ``2^(levels-1)``, cropping back
after, so any length works. Their network ends on swish + layer norm; ``final_proj=True`` (default) adds a
linear 1x1 projection so z0_hat is not confined to layer-normed values.

Timestep embedding ``time_emb``: ``"sinusoidal"`` (paper / DDPM: sin-cos features of t, an MLP, and a learned
per-block bias), or ``"authors"``: ``0.01 * sin(t / 2^f)`` for feature f, added to the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
TIME_EMBS = ("sinusoidal", "authors")


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style sin/cos features of the step t [B] -> [B, dim]."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / max(half, 1))  # [half]
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)  # [B, 2*half]
    return F.pad(emb, (0, dim - 2 * half))


class _Block(nn.Module):
    """conv(k=3, same) -> (+ time bias) -> swish -> layer norm over channels."""

    def __init__(self, c_in: int, c_out: int, padding_mode: str, temb_dim: int | None) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size=3, padding=1, padding_mode=padding_mode)
        self.temb = nn.Linear(temb_dim, c_out) if temb_dim else None
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:  # x [B, C_in, L] -> [B, C_out, L]
        h = self.conv(x)
        if self.temb is not None and temb is not None:
            h = h + self.temb(temb)[:, :, None]
        h = F.silu(h)  # swish
        return self.norm(h.transpose(1, 2)).transpose(1, 2)


class UNet1D(nn.Module):
    """z0_hat = U-Net(concat([z_t, cond]), t) (eq. 15). z_t [B, L, D], cond [B, L, Dc], t [B] in 1..T."""

    def __init__(
        self,
        z_dim: int,
        cond_dim: int,
        out_dim: int | None = None,
        levels: int = 4,
        base_channels: int | None = None,
        channel_mult: int = 2,
        padding_mode: str = "reflect",
        time_emb: str = "sinusoidal",
        steps: int = 50,
        final_proj: bool = True,
        convs_per_level: int = 1,
    ) -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"unknown padding_mode {padding_mode!r}; choose one of {PADDING_MODES}")
        if time_emb not in TIME_EMBS:
            raise ValueError(f"unknown time_emb {time_emb!r}; choose one of {TIME_EMBS}")
        if levels < 1 or convs_per_level < 1 or channel_mult < 1:
            raise ValueError("levels, convs_per_level and channel_mult must be >= 1")
        out_dim = z_dim if out_dim is None else out_dim
        base = base_channels or z_dim
        self.levels = levels
        self.padding_mode = padding_mode
        self.time_emb = time_emb
        in_ch = z_dim + cond_dim
        chans = [base * channel_mult**i for i in range(levels)]

        temb_dim: int | None = None
        if time_emb == "authors":
            tt = torch.arange(steps + 1, dtype=torch.float64)[:, None]  # [T+1, 1]
            f = torch.arange(in_ch, dtype=torch.float64)[None]  # [1, in_ch]
            self.register_buffer("step_table", (0.01 * torch.sin(tt / 2.0**f)).float(), persistent=False)
        else:
            temb_dim = 4 * base
            self.temb_mlp = nn.Sequential(nn.Linear(base, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
            self.temb_in = base

        self.down = nn.ModuleList()
        c_prev = in_ch
        for c in chans:
            blocks = nn.ModuleList()
            for j in range(convs_per_level):
                blocks.append(_Block(c_prev if j == 0 else c, c, padding_mode, temb_dim))
            self.down.append(blocks)
            c_prev = c
        self.up_proj = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(levels - 2, -1, -1):
            c = chans[i]
            self.up_proj.append(nn.Conv1d(chans[i + 1], c, kernel_size=1))
            blocks = nn.ModuleList()
            for j in range(convs_per_level):
                blocks.append(_Block(2 * c if j == 0 else c, c, padding_mode, temb_dim))
            self.up.append(blocks)
        if final_proj:
            self.out = nn.Conv1d(chans[0], out_dim, kernel_size=1)
        else:
            if chans[0] != out_dim:
                raise ValueError(f"final_proj=False needs base_channels == out_dim ({chans[0]} != {out_dim})")
            self.out = nn.Identity()

    def _pad(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Pad the length of x [B, C, L] to a multiple of 2^(levels-1) (and >= 2 at the coarsest level)."""
        m = 2 ** (self.levels - 1)
        length = x.shape[-1]
        total = max(math.ceil(length / m), 2) * m - length
        left, right = total // 2, total - total // 2
        if total == 0:
            return x, 0, 0
        mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}[
            self.padding_mode
        ]
        if mode in ("reflect", "circular") and max(left, right) >= length:
            mode = "replicate"  # too short to reflect / wrap
        return F.pad(x, (left, right), mode=mode), left, right

    def forward(self, z_t: Tensor, cond: Tensor, t: Tensor) -> Tensor:
        """z_t [B, L, D], cond [B, L, Dc], t [B] long -> z0_hat [B, L, out_dim]."""
        length = z_t.shape[1]
        x = torch.cat([z_t, cond], dim=-1)  # [B, L, D + Dc] (eq. 15)
        temb = None
        if self.time_emb == "authors":
            x = x + self.step_table[t][:, None, :]  # 0.01 * sin(t / 2^f) added to the input
        else:
            temb = self.temb_mlp(sinusoidal_embedding(t, self.temb_in))  # [B, temb_dim]
        x, left, _ = self._pad(x.transpose(1, 2))  # [B, C, L']
        skips: list[Tensor] = []
        for i, blocks in enumerate(self.down):  # encoder
            for blk in blocks:
                x = blk(x, temb)
            skips.append(x)
            if i < self.levels - 1:
                x = F.max_pool1d(x, 2)  # [B, C, L'/2]
        for k, (proj, blocks) in enumerate(zip(self.up_proj, self.up, strict=True)):  # decoder
            i = self.levels - 2 - k
            x = F.interpolate(x, scale_factor=2, mode="nearest")  # upsample
            x = F.silu(proj(x))  # 1x1 conv + swish
            x = torch.cat([x, skips[i]], dim=1)  # skip connection
            for blk in blocks:
                x = blk(x, temb)
        x = self.out(x)  # [B, out_dim, L']
        return x[:, :, left:left + length].transpose(1, 2)  # crop -> [B, L, out_dim]
