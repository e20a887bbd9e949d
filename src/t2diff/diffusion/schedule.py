"""Noise schedules and the Gaussian diffusion math of T2Diff (paper §3.1 and §4.2, eq. 1–6, 12–14).

Only the noise math lives here: betas, alphas, the forward process q(z_r | z0) and the posterior
q(z_{t-1} | z_t, z0). How the reverse chain walks from z_T to z_0 (which steps, what noise) is a sampler's job
(``diffusion.samplers``); no network code lives in either.

Indexing: every buffer has ``T + 1`` entries and is indexed by the step ``r`` itself (1..T). Entry 0 is the
clean state (``beta_0 = 0``, ``alpha_bar_0 = 1``), so ``alpha_bar[r - 1]`` is ``alpha_bar_{r-1}`` with no
special case at ``r = 1``.

Schedules (Table 3); ``beta_r`` for r = 1..T, clipped to ``[min_beta, max_beta]`` (default max 0.999, the
usual DDPM cap, so that ``alpha_r = 1 - beta_r`` stays positive):

- ``exp`` (ours, eq. 13 as in the authors' code): ``beta_r = a * exp(b * r / T)``; authors a = 0.01, b = 4.5.
  The paper prints ``a * e^(b r)``; the authors' code divides by T, which we follow.
- ``linear`` (DiffuRec / DDPM): ``beta_r`` evenly spaced from ``beta_start`` to ``beta_end``; default
  endpoints are DDPM's 1e-4 and 0.02 scaled by 1000 / T (the improved-diffusion / DiffuRec convention).
- ``log``: the paper gives no formula; we take the concave counterpart of ``exp`` with the same endpoints
  as ``linear``: ``beta_r = beta_start + (beta_end - beta_start) * ln(r) / ln(T)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SCHEDULES = ("exp", "linear", "log")  # the beta schedules make_betas knows (Table 3)


def make_betas(
    name: str,
    steps: int,
    a: float = 0.01,
    b: float = 4.5,
    beta_start: float | None = None,
    beta_end: float | None = None,
    min_beta: float = 1e-8,
    max_beta: float = 0.999,
) -> Tensor:
    """``beta_1..beta_T`` as a float64 tensor [T] (see the module docstring for the formulas)."""
    if steps < 1:
        raise ValueError(f"diffusion steps T must be >= 1, got {steps}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    r = torch.arange(1, steps + 1, dtype=torch.float64)  # [T]
    if name == "exp":
        betas = a * torch.exp(b * r / steps)  # eq. 13 (with r / T, as the authors' code)
    elif name in ("linear", "log"):
        scale = 1000.0 / steps
        lo = beta_start if beta_start is not None else 1e-4 * scale
        hi = beta_end if beta_end is not None else 0.02 * scale
        if name == "linear":
            frac = (r - 1) / (steps - 1) if steps > 1 else torch.ones_like(r)
        else:
            frac = torch.log(r) / math.log(steps) if steps > 1 else torch.ones_like(r)
        betas = lo + (hi - lo) * frac
    else:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")
    return betas.clamp(min_beta, max_beta)


def _bcast(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-example coefficient [B] (or a scalar) to broadcast against ``like`` [B, ...]."""
    if coef.dim() == 0:
        return coef.to(like.dtype)
    return coef.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule(nn.Module):
    """A fixed beta schedule (``name``, T = ``steps``, and ``make_betas``'s shape parameters) with the forward
    step (eq. 3, 14) and the posterior of the reverse step (eq. 4–6). Buffers are non-persistent: they are
    rebuilt from the config, never stored in a checkpoint."""

    betas: Tensor
    alphas: Tensor
    alpha_bar: Tensor
    alpha_bar_prev: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    post_coef_z0: Tensor
    post_coef_zt: Tensor
    post_var: Tensor

    def __init__(
        self,
        name: str = "exp",
        steps: int = 50,
        *,
        a: float = 0.01,
        b: float = 4.5,
        beta_start: float | None = None,
        beta_end: float | None = None,
        max_beta: float = 0.999,
    ) -> None:
        super().__init__()
        self.name = name
        self.steps = steps
        b64 = make_betas(name, steps, a, b, beta_start, beta_end, max_beta=max_beta)  # [T], float64
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), b64])  # [T+1], entry 0 = clean state
        alphas = 1.0 - betas  # alpha_r = 1 - beta_r
        alpha_bar = torch.cumprod(alphas, 0)  # alpha_bar_r = prod_{i<=r} alpha_i (eq. 3); alpha_bar_0 = 1
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])  # alpha_bar_{r-1}
        denom = (1.0 - alpha_bar).clamp_min(1e-20)  # 1 - alpha_bar_r (only entry 0 would be 0)
        post_coef_z0 = alpha_bar_prev.sqrt() * betas / denom  # eq. 5, coefficient of z0
        post_coef_zt = alphas.sqrt() * (1.0 - alpha_bar_prev) / denom  # eq. 5, coefficient of z_t
        post_var = (1.0 - alpha_bar_prev) / denom * betas  # eq. 6, beta_tilde_t
        post_coef_z0[0], post_coef_zt[0], post_var[0] = 1.0, 0.0, 0.0  # step 0 is z0 itself
        for key, val in {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1.0 - alpha_bar).sqrt(),
            "post_coef_z0": post_coef_z0,
            "post_coef_zt": post_coef_zt,
            "post_var": post_var,
        }.items():
            self.register_buffer(key, val.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, steps={self.steps}"

    # ---------------------------------------------------------------- forward process
    def sample_steps(self, n: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """r ~ Uniform({1, ..., T}) (eq. 12), one per example: [n] long."""
        return torch.randint(1, self.steps + 1, (n,), device=device, generator=generator)

    def q_sample(self, z0: Tensor, r: Tensor | int, noise: Tensor) -> Tensor:
        """z_r = sqrt(alpha_bar_r) z0 + sqrt(1 - alpha_bar_r) eps (eq. 14, the closed form of eq. 2–3).

        z0, noise [B, ...]; r [B] long in 1..T (or an int for the whole batch)."""
        r = torch.as_tensor(r, device=z0.device)
        return _bcast(self.sqrt_alpha_bar[r], z0) * z0 + _bcast(self.sqrt_one_minus_alpha_bar[r], z0) * noise

    # ---------------------------------------------------------------- reverse process
    def posterior_mean_variance(self, z0: Tensor, zt: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """Mean mu_tilde_t(z_t, z0) (eq. 5) and variance beta_tilde_t (eq. 6) of q(z_{t-1} | z_t, z0) (eq. 4).

        Returns mean [B, ...] and the variance broadcastable against it."""
        t = torch.as_tensor(t, device=zt.device)
        mean = _bcast(self.post_coef_z0[t], zt) * z0 + _bcast(self.post_coef_zt[t], zt) * zt  # eq. 5
        var = _bcast(self.post_var[t], zt)  # eq. 6
        return mean, var
