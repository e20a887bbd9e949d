"""Samplers (diffusion.samplers): the reverse chain (Alg. 2) apart from the schedule's noise math. ``ddpm`` must be
the chain as it was computed before samplers existed, bit for bit; the interface must allow a sampler that visits
fewer steps than the training T."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from t2diff.diffusion import (
    REVERSE_NOISE,
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    NoiseSchedule,
    Sampler,
    make_betas,
    make_sampler,
)
from t2diff.diffusion.keyed_noise import keyed_normal, row_keys


def reference_chain(s: NoiseSchedule, f: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, ...],
                    reverse_noise: str, generator: torch.Generator | None = None,
                    noise_fn: Callable[[int], Tensor] | None = None,
                    trace: list[tuple[int, Tensor]] | None = None) -> Tensor:
    """A frozen copy of NoiseSchedule.reverse_chain + p_step as they were before the samplers (same draws in
    the same order, same float32 operations)."""

    def draw(k: int) -> Tensor:
        return noise_fn(k) if noise_fn is not None else torch.randn(shape, generator=generator)

    z = draw(0)
    for t in range(s.steps, 0, -1):
        z0_hat = f(z, torch.full((shape[0],), t, dtype=torch.long))
        if trace is not None:
            trace.append((t, z0_hat))
        noise = draw(t) if t > 1 else None
        if t == 1:
            z = z0_hat
            continue
        mean = s.post_coef_z0[t] * z0_hat + s.post_coef_zt[t] * z  # eq. 5
        var = s.post_var[t]  # eq. 6
        z = mean + (var.sqrt() if reverse_noise == "std" else var) * noise  # eq. 17
    return z


def _f(z: Tensor, t: Tensor) -> Tensor:  # a non-linear stand-in for the U-Net that depends on t
    return torch.tanh(0.7 * z + t[:, None, None].float() / 10) + 0.1 * z.flip(1)


@pytest.mark.parametrize(("name", "steps"), [("exp", 10), ("linear", 8), ("log", 5), ("exp", 1)])
@pytest.mark.parametrize("reverse_noise", REVERSE_NOISE)
@pytest.mark.parametrize("noise", ["generator", "keyed"])
def test_ddpm_is_the_old_chain_bit_for_bit(name: str, steps: int, reverse_noise: str, noise: str) -> None:
    s = NoiseSchedule(name, steps)
    sampler = make_sampler("ddpm", s, reverse_noise)
    shape = (4, 6, 3)
    keys = row_keys(torch.randint(0, 30, (4, 6), generator=torch.Generator().manual_seed(9)), 0)
    kw: dict = {"noise_fn": lambda k: keyed_normal(keys, k, shape[1:])} if noise == "keyed" else {}
    ref_trace: list[tuple[int, Tensor]] = []
    got_trace: list[tuple[int, Tensor]] = []
    ref = reference_chain(s, _f, shape, reverse_noise, generator=torch.Generator().manual_seed(5), trace=ref_trace,
                          **kw)
    got = sampler.sample(_f, shape, generator=torch.Generator().manual_seed(5), trace=got_trace, **kw)
    assert torch.equal(got, ref)
    assert [t for t, _ in got_trace] == [t for t, _ in ref_trace] == list(range(steps, 0, -1))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got_trace, ref_trace, strict=True))
    if steps > 1:  # the two noise scales really differ
        other = make_sampler("ddpm", s, "var" if reverse_noise == "std" else "std")
        assert not torch.equal(other.sample(_f, shape, generator=torch.Generator().manual_seed(5), **kw), got)


def test_ddpm_step_is_eq5_and_eq17() -> None:
    steps = 20
    s = NoiseSchedule("exp", steps)
    std, var_ = DDPMSampler(s, "std"), DDPMSampler(s, "var")
    betas = make_betas("exp", steps).tolist()
    g = torch.Generator().manual_seed(1)
    z0, zt, eps = (torch.randn(3, 7, 5, generator=g) for _ in range(3))
    for t in (2, 7, steps):
        ab_t = math.prod(1 - b for b in betas[:t])
        ab_prev = math.prod(1 - b for b in betas[: t - 1])
        beta = betas[t - 1]
        mean = math.sqrt(ab_prev) * beta / (1 - ab_t) * z0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t) * zt
        var = (1 - ab_prev) / (1 - ab_t) * beta  # eq. 6
        torch.testing.assert_close(std.step(z0, t, zt), mean, rtol=1e-5, atol=1e-6)  # no noise: the mean
        torch.testing.assert_close(std.step(z0, t, zt, eps), mean + math.sqrt(var) * eps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var_.step(z0, t, zt, eps), mean + var * eps, rtol=1e-5, atol=1e-6)  # eq. 17
        assert std.needs_noise(t)
    assert std.step(z0, 1, zt, eps) is z0 and not std.needs_noise(1)  # t = 1: beta_tilde_1 = 0, mean = z0_hat


def test_oracle_approximator_gives_z0_exactly() -> None:
    s = NoiseSchedule("exp", 10)
    z0 = torch.randn(4, 6, 3)
    seen: list[int] = []

    def oracle(z: Tensor, t: Tensor) -> Tensor:
        assert z.shape == z0.shape and t.shape == (4,) and t.dtype == torch.long
        seen.append(int(t[0]))
        return z0

    out = DDPMSampler(s).sample(oracle, tuple(z0.shape), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, z0) and seen == list(range(10, 0, -1))


def test_seeded_generator_is_reproducible() -> None:
    sampler = DDPMSampler(NoiseSchedule("linear", 8))

    def f(z: Tensor, t: Tensor) -> Tensor:
        return 0.5 * z

    a = sampler.sample(f, (2, 5, 3), generator=torch.Generator().manual_seed(3))
    b = sampler.sample(f, (2, 5, 3), generator=torch.Generator().manual_seed(3))
    c = sampler.sample(f, (2, 5, 3), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_registry_and_timesteps() -> None:
    s = NoiseSchedule("exp", 6)
    assert SAMPLERS == {"ddpm": DDPMSampler, "ddim": DDIMSampler}
    assert isinstance(make_sampler("ddpm", s), DDPMSampler)
    assert isinstance(make_sampler("ddim", s, steps=2), DDIMSampler)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        make_sampler("dpm", s)
    with pytest.raises(ValueError, match="reverse_noise"):
        DDPMSampler(s, "sigma")
    ddpm = DDPMSampler(s)
    assert ddpm.timesteps == [6, 5, 4, 3, 2, 1] and [ddpm.prev_timestep(t) for t in (6, 2, 1)] == [5, 1, 0]
    with pytest.raises(ValueError, match="every one of the T = 6 steps"):
        ddpm.set_timesteps(3)


class FewStepDDIM(Sampler):
    """A deterministic DDIM (eta = 0) over ``n`` evenly spaced steps: what the interface must allow."""

    name = "ddim-test"

    def __init__(self, schedule: NoiseSchedule, n: int) -> None:
        super().__init__(schedule)
        self.set_timesteps(n)

    def set_timesteps(self, n: int) -> None:
        t = self.schedule.steps
        self.timesteps = sorted({round(t - i * t / n) for i in range(n)}, reverse=True)

    def step(self, model_output: Tensor, t: int, sample: Tensor, noise: Tensor | None = None) -> Tensor:
        ab, ab_prev = self.schedule.alpha_bar[t], self.schedule.alpha_bar[self.prev_timestep(t)]
        eps = (sample - ab.sqrt() * model_output) / (1 - ab).sqrt()  # the noise z_t implies
        return ab_prev.sqrt() * model_output + (1 - ab_prev).sqrt() * eps


def test_a_sampler_may_visit_fewer_steps_than_t() -> None:
    """End to end through T2Diff: x_hat, its trace and the Figure-4 diagnostics follow the sampler's steps."""
    from test_t2diff import make_batch, make_info, small_cfg

    from t2diff.diagnostics import diffusion_cosine_trace
    from t2diff.models.t2diff import T2Diff

    s = NoiseSchedule("exp", 10)
    z0 = torch.randn(2, 4, 3)
    seen: list[int] = []
    out = FewStepDDIM(s, 3).sample(lambda z, t: seen.append(int(t[0])) or z0, tuple(z0.shape))
    assert seen == [10, 7, 3] and torch.allclose(out, z0, atol=1e-6)  # the oracle lands on z0 (alpha_bar_0 = 1)

    torch.manual_seed(0)
    model = T2Diff(small_cfg(diffusion={"steps": 10}), make_info()).eval()
    model.sampler = FewStepDDIM(model.schedule, 3)
    batch = make_batch()
    with torch.no_grad():
        x_hat, trace = model.sample_xhat(model.item_inputs(batch.seq), batch.seq, trace=True)
        assert bool(model.user_embeddings(batch).isfinite().all())
    assert [t for t, _ in trace] == [10, 7, 3] and model.reverse_steps == 3 and x_hat.shape == (6, 16)
    rows = diffusion_cosine_trace(model, [batch])
    assert [(r["t"], r["iteration"]) for r in rows] == [(10, 1), (7, 2), (3, 3)]


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_ddim_timesteps_and_an_oracle_lands_on_z0(n: int) -> None:
    s = NoiseSchedule("linear", 10)
    d = make_sampler("ddim", s, steps=n)
    assert len(d.timesteps) == n and d.timesteps[0] == 10 and d.timesteps == sorted(set(d.timesteps), reverse=True)
    assert n == 1 or d.timesteps[-1] == 1
    z0 = torch.randn(3, 4)
    seen: list[int] = []
    out = d.sample(lambda z, t: seen.append(int(t[0])) or z0, (3, 4), generator=torch.Generator().manual_seed(1))
    assert seen == d.timesteps and torch.allclose(out, z0, atol=1e-6)
    # the chain's state after each step: one per visited t, the last is the output, and with an oracle it only
    # moves towards z0 (cosine non-decreasing: sqrt(alpha_bar) of the state's z0 share grows every step)
    states: list[tuple[int, Tensor]] = []
    out2 = d.sample(lambda z, t: z0, (3, 4), generator=torch.Generator().manual_seed(1), states=states)
    assert [t for t, _ in states] == d.timesteps and torch.equal(states[-1][1], out2)
    cos = [float(torch.nn.functional.cosine_similarity(z.flatten(), z0.flatten(), dim=0)) for _, z in states]
    assert all(b >= a - 1e-6 for a, b in zip(cos, cos[1:], strict=False)) and cos[-1] > 0.999
    with pytest.raises(ValueError, match="1..T = 10"):
        d.set_timesteps(11)


def test_ddim_eta0_is_deterministic_given_z_t_and_matches_its_closed_form() -> None:
    s = NoiseSchedule("exp", 8)
    d = make_sampler("ddim", s, steps=3)  # visits 8, 4 (rounded), 1
    z_t, z0_hat = torch.randn(2, 5), torch.randn(2, 5)
    t, prev = d.timesteps[0], d.timesteps[1]
    a_t, a_s = s.alpha_bar[t], s.alpha_bar[prev]
    eps = (z_t - a_t.sqrt() * z0_hat) / (1 - a_t).sqrt()
    want = a_s.sqrt() * z0_hat + (1 - a_s).sqrt() * eps  # DDIM eq. 12 with sigma = 0
    assert torch.allclose(d.step(z0_hat, t, z_t), want, atol=1e-6) and not d.needs_noise(t)
    a = d.sample(_f, (2, 4, 3), generator=torch.Generator().manual_seed(0))
    b = d.sample(_f, (2, 4, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_ddim_eta1_over_all_steps_is_the_ddpm_posterior() -> None:
    """With eta = 1 and every step, DDIM's mean and noise scale are DDPM's mu_tilde and sqrt(beta_tilde)
    (eq. 4-6): the two chains agree draw for draw."""
    s = NoiseSchedule("linear", 12)
    ddim, ddpm = DDIMSampler(s, eta=1.0), DDPMSampler(s, "std")
    assert ddim.timesteps == ddpm.timesteps
    for t in (12, 7, 2):
        z_t, z0_hat, noise = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
        assert ddim.needs_noise(t) and ddpm.needs_noise(t)
        assert torch.allclose(ddim.step(z0_hat, t, z_t, noise), ddpm.step(z0_hat, t, z_t, noise), atol=1e-5)
    a = ddim.sample(_f, (2, 4, 3), generator=torch.Generator().manual_seed(7))
    b = ddpm.sample(_f, (2, 4, 3), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(s, eta=1.5)


@pytest.mark.parametrize("name,n", [("ddpm", 20), ("ddim", 20), ("ddim", 2)])
def test_exact_sampler_keeps_the_inner_product_and_its_cosine_falls(name: str, n: int) -> None:
    """Why Figure 4's x0-prediction need not rise for a sampler from pure noise (RESULTS.md, issue 14): with data
    x0 ~ N(mu, s^2 I) and the exact denoiser E[x0 | z_t] (closed form), the chain never sees the realised item x,
    so E<z0_hat_t, x> = <E z0_hat_t, mu> = |mu|^2 at every step, while |z0_hat_t| grows from the mean's norm
    towards a sample's; the cosine to x therefore falls along the chain."""
    torch.manual_seed(0)
    s = NoiseSchedule("linear", 20)
    mu, sd, b, d = torch.full((8,), 0.5), 0.7, 20000, 8
    ab = s.alpha_bar.float()

    def exact(z: Tensor, t: Tensor) -> Tensor:  # E[x0 | z_t] for Gaussian x0 (posterior mean)
        a = ab[t][:, None]
        return mu + a.sqrt() * sd**2 / (a * sd**2 + 1 - a) * (z - a.sqrt() * mu)

    trace: list[tuple[int, Tensor]] = []
    make_sampler(name, s, steps=n).sample(exact, (b, d), generator=torch.Generator().manual_seed(2), trace=trace)
    x = mu + sd * torch.randn(b, d, generator=torch.Generator().manual_seed(3))  # the realised next items
    dot = [float((z * x).sum(-1).mean()) for _, z in trace]
    norm = [float(z.norm(dim=-1).mean()) for _, z in trace]
    cos = [float(torch.nn.functional.cosine_similarity(z, x, dim=-1).mean()) for _, z in trace]
    se = float((trace[-1][1] * x).sum(-1).std()) / b**0.5
    assert all(abs(v - float(mu @ mu)) < 4 * se for v in dot)  # the inner product stays at |mu|^2
    if n == s.steps:  # a fine chain ends near a sample: the norm grows by about a third, the cosine falls
        assert norm[-1] > norm[0] * 1.3 and cos[-1] < cos[0] - 0.1
    else:  # one deterministic jump from T to 1 shrinks the spread (DDIM's known variance loss): barely moves
        assert norm[-1] >= norm[0] - 1e-3 and cos[-1] <= cos[0] + 1e-3
