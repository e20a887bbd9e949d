"""Noise schedules, the forward step and the posterior (eq. 3–6, 13–14), the 1-D U-Net approximator and the keyed
noise. The reverse chain's samplers: test_samplers.py."""

from __future__ import annotations

import math

import pytest
import torch

from t2diff.diffusion import SCHEDULES, NoiseSchedule, make_betas
from t2diff.models.unet1d import PADDING_MODES, UNet1D


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 10, 50, 200])
def test_schedule_ranges(name: str, steps: int) -> None:
    s = NoiseSchedule(name, steps)
    betas = s.betas[1:]
    assert betas.shape == (steps,)
    assert bool(((betas > 0) & (betas < 1)).all())
    assert s.alpha_bar[0] == 1.0
    assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all())  # strictly decreasing
    assert bool((s.alpha_bar > 0).all())
    prod = torch.cumprod(1 - make_betas(name, steps), 0)  # alpha_bar_r = prod (1 - beta_i), float64
    torch.testing.assert_close(s.alpha_bar[1:].double(), prod, rtol=1e-5, atol=1e-12)


def test_exp_schedule_closed_form() -> None:
    a, b, steps = 0.01, 4.5, 50
    r = torch.arange(1, steps + 1, dtype=torch.float64)
    torch.testing.assert_close(make_betas("exp", steps, a, b), a * torch.exp(b * r / steps))
    # a steeper schedule is clipped at max_beta
    betas = make_betas("exp", 10, 0.01, 5.0, max_beta=0.999)
    assert betas[-1] == 0.999 and 0.01 * math.exp(5.0) > 1


def test_linear_and_log_endpoints() -> None:
    lin = make_betas("linear", 50)
    torch.testing.assert_close(lin[[0, -1]], torch.tensor([1e-4 * 20, 0.02 * 20], dtype=torch.float64))
    torch.testing.assert_close(lin.diff(), torch.full((49,), float(lin[1] - lin[0]), dtype=torch.float64))
    log = make_betas("log", 50, beta_start=0.01, beta_end=0.5)
    torch.testing.assert_close(log[[0, -1]], torch.tensor([0.01, 0.5], dtype=torch.float64))
    assert bool((log.diff() > 0).all()) and bool((log.diff().diff() < 0).all())  # increasing, concave
    with pytest.raises(ValueError):
        make_betas("cosine", 10)


def test_q_sample_moments_monte_carlo() -> None:
    """z_r ~ N(sqrt(alpha_bar_r) z0, (1 - alpha_bar_r) I) (eq. 3 / 14)."""
    s = NoiseSchedule("exp", 50)
    g = torch.Generator().manual_seed(0)
    z0 = torch.tensor([1.0, -2.0, 0.5, 0.0])
    n = 100_000
    for r in (1, 10, 50):
        ab = float(torch.prod(1 - make_betas("exp", 50)[:r]))  # independent of the buffers
        noise = torch.randn(n, 4, generator=g)
        z = s.q_sample(z0.expand(n, 4), torch.full((n,), r), noise)
        torch.testing.assert_close(z.mean(0), math.sqrt(ab) * z0, atol=0.015, rtol=0)
        torch.testing.assert_close(z.var(0), torch.full((4,), 1 - ab), atol=0.015, rtol=0)
    # per-example steps broadcast row-wise
    r = torch.tensor([1, 50])
    z = s.q_sample(torch.ones(2, 3, 4), r, torch.zeros(2, 3, 4))
    torch.testing.assert_close(z[:, 0, 0], s.sqrt_alpha_bar[r])


def test_posterior_matches_eq5_eq6() -> None:
    steps = 20
    s = NoiseSchedule("exp", steps)
    betas = make_betas("exp", steps).tolist()
    g = torch.Generator().manual_seed(1)
    z0, zt = (torch.randn(3, 7, 5, generator=g) for _ in range(2))
    for t in (2, 7, steps):
        ab_t = math.prod(1 - b for b in betas[:t])
        ab_prev = math.prod(1 - b for b in betas[: t - 1])
        beta = betas[t - 1]
        c0 = math.sqrt(ab_prev) * beta / (1 - ab_t)  # eq. 5
        ct = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
        mean = c0 * z0 + ct * zt
        var = (1 - ab_prev) / (1 - ab_t) * beta  # eq. 6
        m, v = s.posterior_mean_variance(z0, zt, t)
        torch.testing.assert_close(m, mean, rtol=1e-5, atol=1e-6)
        assert float(v) == pytest.approx(var, rel=1e-5)


def test_schedule_shape_parameters_reach_the_betas() -> None:
    s = NoiseSchedule("log", 50, beta_start=0.01, beta_end=0.5, max_beta=0.4)
    torch.testing.assert_close(s.betas[1:], make_betas("log", 50, beta_start=0.01, beta_end=0.5, max_beta=0.4).float())
    e = NoiseSchedule("exp", 10, a=0.02, b=3.0)
    torch.testing.assert_close(e.betas[1:], make_betas("exp", 10, 0.02, 3.0).float())
    with pytest.raises(TypeError):
        NoiseSchedule("exp", 10, 0.02)  # the shape parameters are keyword-only


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_is_consistent_with_marginals(name: str) -> None:
    """Averaging q(z_{t-1} | z_t, z0) over z_t ~ q(z_t | z0) gives q(z_{t-1} | z0): mean and variance."""
    s = NoiseSchedule(name, 30)
    for t in range(2, 31):
        ab_t, ab_p = s.alpha_bar[t].double(), s.alpha_bar[t - 1].double()
        cz0, czt, var = s.post_coef_z0[t].double(), s.post_coef_zt[t].double(), s.post_var[t].double()
        assert float(cz0 + czt * ab_t.sqrt()) == pytest.approx(float(ab_p.sqrt()), abs=1e-5)
        assert float(czt**2 * (1 - ab_t) + var) == pytest.approx(float(1 - ab_p), abs=1e-5)


@pytest.mark.parametrize("length", [1, 5, 13, 16, 50])
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_unet_shapes_any_length(length: int, mode: str) -> None:
    torch.manual_seed(0)
    net = UNet1D(8, 8, levels=4, padding_mode=mode, steps=10)
    z, c = torch.randn(2, length, 8), torch.randn(2, length, 8)
    out = net(z, c, torch.tensor([1, 10]))
    assert out.shape == (2, length, 8) and bool(out.isfinite().all())


def test_unet_options_and_gradients() -> None:
    torch.manual_seed(0)
    net = UNet1D(8, 8, levels=3, time_emb="authors", final_proj=False, steps=5, convs_per_level=2)
    z = torch.randn(3, 11, 8, requires_grad=True)
    out = net(z, torch.randn(3, 11, 8), torch.tensor([1, 3, 5]))
    out.sum().backward()
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)
    # the step changes the output (timestep embedding is wired in) for both embeddings
    for emb in ("authors", "sinusoidal"):
        net = UNet1D(8, 8, levels=2, time_emb=emb, steps=5)
        zz = torch.randn(1, 6, 8)
        assert not torch.allclose(net(zz, zz, torch.tensor([1])), net(zz, zz, torch.tensor([5])))
    with pytest.raises(ValueError):
        UNet1D(8, 8, base_channels=16, final_proj=False)
    with pytest.raises(ValueError):
        UNet1D(8, 8, padding_mode="mirror")


def test_keyed_noise_is_standard_normal_and_keyed() -> None:
    from t2diff.diffusion.keyed_noise import _as_i32, keyed_normal, mix32, mix32_i32, row_keys

    x = torch.arange(200_000, dtype=torch.long)
    h = mix32(x)
    assert int(h.min()) >= 0 and int(h.max()) < 2**32 and h.unique().numel() == x.numel()  # bijective here
    # the fast int32 version (wrapping multiplies) is bit-identical to the int64 reference
    big = torch.randint(0, 2**32, (100_000,), generator=torch.Generator().manual_seed(1), dtype=torch.long)
    assert torch.equal(mix32_i32(_as_i32(big)).long() & 0xFFFFFFFF, mix32(big))
    seq = torch.randint(0, 1000, (64, 20), generator=torch.Generator().manual_seed(0))
    keys = row_keys(seq, seed=0)
    z = keyed_normal(keys, 3, (20, 50))  # [64, 20, 50]
    assert z.shape == (64, 20, 50) and z.dtype == torch.float32
    flat = z.flatten().double()
    assert abs(flat.mean().item()) < 0.02 and abs(flat.std().item() - 1) < 0.02  # 64,000 draws: se 0.004
    assert abs(((flat > 1.96).double().mean() - 0.025).item()) < 0.005  # the tail of N(0, 1)
    corr = torch.corrcoef(torch.stack([z[0].flatten(), z[1].flatten(), keyed_normal(keys, 4, (20, 50))[0].flatten()]))
    assert corr.abs().triu(1).max() < 0.1  # rows and steps are independent streams
    assert torch.equal(keyed_normal(keys[5:6], 3, (20, 50))[0], z[5])  # a row's noise ignores the others
    assert not torch.equal(row_keys(seq, seed=1), keys)
    seq2 = seq.clone()
    seq2[0, 7] += 1
    assert row_keys(seq2, 0)[0] != keys[0] and torch.equal(row_keys(seq2, 0)[1:], keys[1:])
