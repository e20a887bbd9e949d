"""Samplers: how the reverse chain (paper Alg. 2) walks from z_T ~ N(0, I) down to z_0, kept apart from the
schedule's noise math (``diffusion.schedule``), in the style of diffusers' schedulers.

A sampler wraps a ``NoiseSchedule`` of T training steps. ``set_timesteps(n)`` picks the steps the chain visits
(``timesteps``, largest first; a few-step sampler may visit fewer than T), ``step(z0_hat, t, z_t, noise)``
makes one reverse step from z_t to z at the next visited step, and ``sample`` runs the whole loop around an
approximator ``f(z_t, t) -> z0_hat`` (the network predicts z0, eq. 15–16). Samplers hold no parameters and no
persistent state: a checkpoint never depends on the sampler, only the config names it.

Noise: z_T and the noise of each step come from ``noise_fn(k)`` when given (k = 0 for z_T, k = t for the noise
of step t, e.g. T2Diff's keyed per-history noise, ``diffusion.keyed_noise``), else from ``generator`` (or the
global RNG), drawn in the chain's order: z_T first, then each step's noise after its approximator call.

Registry: ``SAMPLERS[name]`` (config ``model.diffusion.sampler``). ``ddpm`` is the paper's chain, every one of
the T steps with the posterior of eq. 4–6 and the noise of eq. 17. ``ddim`` (Song et al., ICLR 2021) visits any
``n <= T`` of the steps, deterministic at ``eta = 0``; the number of steps is chosen at inference, the network
(trained on all T steps) is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from t2diff.diffusion.schedule import NoiseSchedule

Approximator = Callable[[Tensor, Tensor], Tensor]  # f(z_t [shape], t [B] long) -> z0_hat [shape]
NoiseFn = Callable[[int], Tensor]  # k -> standard normal noise [shape]

# scale of the reverse-step noise: std = sqrt(beta_tilde_t), the standard deviation of eq. 4 | var = beta_tilde_t
# itself, as eq. 17 is printed and as the authors' code does
REVERSE_NOISE = ("std", "var")


class Sampler:
    """Base class: the loop over ``timesteps`` (``sample``); subclasses implement ``step`` and, where they
    differ from the defaults, ``set_timesteps`` and ``needs_noise``."""

    name: ClassVar[str] = ""

    def __init__(self, schedule: NoiseSchedule, reverse_noise: str = "std") -> None:
        if reverse_noise not in REVERSE_NOISE:
            raise ValueError(f"unknown reverse_noise {reverse_noise!r}; choose one of {REVERSE_NOISE}")
        self.schedule = schedule
        self.reverse_noise = reverse_noise
        self.timesteps: list[int] = []  # the steps the chain visits, largest first
        self.set_timesteps(schedule.steps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={len(self.timesteps)} of T={self.schedule.steps}, " \
               f"reverse_noise={self.reverse_noise!r})"

    def set_timesteps(self, n: int) -> None:
        """Visit ``n`` of the schedule's T steps. The default runs every step (n must equal T)."""
        if n != self.schedule.steps:
            raise ValueError(f"the {self.name or type(self).__name__} sampler visits every one of the "
                             f"T = {self.schedule.steps} steps; got {n}")
        self.timesteps = list(range(self.schedule.steps, 0, -1))  # T, T-1, ..., 1

    def prev_timestep(self, t: int) -> int:
        """The step the chain visits after ``t`` (0, the clean state, after the last one)."""
        i = self.timesteps.index(t)
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0

    def needs_noise(self, t: int) -> bool:
        """Whether ``step`` at ``t`` takes fresh noise (the loop draws it only then)."""
        return False

    def step(self, model_output: Tensor, t: int, sample: Tensor, noise: Tensor | None = None) -> Tensor:
        """One reverse step: z0_hat = ``model_output`` and z_t = ``sample`` [B, ...] at step ``t`` -> the sample
        at ``prev_timestep(t)`` [B, ...]."""
        raise NotImplementedError

    def sample(
        self,
        approximator: Approximator,
        shape: tuple[int, ...],
        *,
        noise_fn: NoiseFn | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        trace: list[tuple[int, Tensor]] | None = None,
        states: list[tuple[int, Tensor]] | None = None,
    ) -> Tensor:
        """The reverse process (Alg. 2): z_T ~ N(0, I); for t in ``timesteps``: z0_hat = f(z_t, t) (eq. 15–16),
        z = step(z0_hat, t, z_t, noise) (eq. 17). Returns z_0 [shape]. ``approximator`` gets z_t [shape] and t
        as a long tensor [shape[0]]; ``trace``, if given, receives ``(t, z0_hat)`` at every visited step, and
        ``states`` ``(t, z)``: the chain's state after step t (after the last step, the returned z_0)."""
        device = self.schedule.betas.device if device is None else device

        def draw(k: int) -> Tensor:
            if noise_fn is not None:
                return noise_fn(k)
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)

        z = draw(0)  # z_T ~ N(0, I)
        for t in self.timesteps:
            tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
            z0_hat = approximator(z, tt)  # eq. 15–16
            if trace is not None:
                trace.append((t, z0_hat))
            z = self.step(z0_hat, t, z, draw(t) if self.needs_noise(t) else None)  # eq. 17
            if states is not None:
                states.append((t, z))
        return z


class DDPMSampler(Sampler):
    """The paper's chain (Alg. 2): every step t = T..1, z_{t-1} = mu_tilde_t(z_t, z0_hat) + sigma_t eps'
    (eq. 5, 17), sigma_t = sqrt(beta_tilde_t) (``reverse_noise="std"``) or beta_tilde_t (``"var"``)."""

    name = "ddpm"

    def needs_noise(self, t: int) -> bool:
        return t > 1  # beta_tilde_1 = 0: the last step is noiseless

    def step(self, model_output: Tensor, t: int, sample: Tensor, noise: Tensor | None = None) -> Tensor:
        """z_{t-1} from z0_hat = ``model_output`` and z_t = ``sample`` (eq. 16–17), t in 1..T; without noise
        the posterior mean. At t = 1, beta_tilde_1 = 0 and mu_tilde_1 = z0_hat: z0_hat is returned as is."""
        if t == 1:
            return model_output
        mean, var = self.schedule.posterior_mean_variance(model_output, sample, t)  # eq. 5–6
        if noise is None:
            return mean
        sigma = var.sqrt() if self.reverse_noise == "std" else var
        return mean + sigma * noise  # eq. 17


class DDIMSampler(Sampler):
    """DDIM (Song et al., ICLR 2021, eq. 12): from z0_hat and z_t, eps_hat = (z_t - sqrt(a_t) z0_hat) /
    sqrt(1 - a_t) and z_s = sqrt(a_s) z0_hat + sqrt(1 - a_s - sigma^2) eps_hat + sigma eps', with a = alpha_bar,
    s the next visited step and sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s). ``eta = 0``: no
    noise at all (deterministic); ``eta = 1`` over all T steps is the DDPM posterior (eq. 4–6, tested).

    ``set_timesteps(n)``: n of the T steps, evenly spaced from T down to 1 (n = 1: the single step T)."""

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, reverse_noise: str = "std", eta: float = 0.0) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"DDIM eta must lie in [0, 1], got {eta}")
        self.eta = eta
        super().__init__(schedule, reverse_noise)

    def __repr__(self) -> str:
        return f"DDIMSampler(steps={len(self.timesteps)} of T={self.schedule.steps}, eta={self.eta})"

    def set_timesteps(self, n: int) -> None:
        t_max = self.schedule.steps
        if not 1 <= n <= t_max:
            raise ValueError(f"the ddim sampler visits 1..T = {t_max} steps; got {n}")
        if n == 1:
            self.timesteps = [t_max]
            return
        picked = torch.linspace(t_max, 1, n, dtype=torch.float64).round().long().tolist()  # T ... 1, distinct
        self.timesteps = [int(t) for t in picked]

    def needs_noise(self, t: int) -> bool:
        return self.eta > 0 and self.prev_timestep(t) > 0

    def step(self, model_output: Tensor, t: int, sample: Tensor, noise: Tensor | None = None) -> Tensor:
        s = self.prev_timestep(t)
        ab = self.schedule.alpha_bar
        a_t, a_s = ab[t].to(sample.dtype), ab[s].to(sample.dtype)
        if s == 0:  # a_0 = 1: the clean state is z0_hat itself
            return model_output
        eps = (sample - a_t.sqrt() * model_output) / (1.0 - a_t).clamp_min(1e-20).sqrt()
        sigma2 = (self.eta ** 2) * (1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)
        out = a_s.sqrt() * model_output + (1.0 - a_s - sigma2).clamp_min(0.0).sqrt() * eps
        if noise is not None and self.eta > 0:
            out = out + sigma2.sqrt() * noise
        return out


SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(name: str, schedule: NoiseSchedule, reverse_noise: str = "std", steps: int | None = None,
                 eta: float = 0.0) -> Sampler:
    """``SAMPLERS[name]`` over ``schedule``, visiting ``steps`` of its T steps (None: all T; ddpm visits every
    step); ``eta``: DDIM's noise scale. ValueError naming the choices for an unknown name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {tuple(SAMPLERS)}")
    sampler = DDIMSampler(schedule, reverse_noise, eta) if name == "ddim" else SAMPLERS[name](schedule, reverse_noise)
    if steps is not None:
        sampler.set_timesteps(steps)
    return sampler
