"""The energy score (``t2diff.diffusion.energy``): hand-computed values, its closed form for Gaussians, and the
property it is used for: minimising it recovers the outcome's spread, where squared error collapses to the mean."""

from __future__ import annotations

import math

import pytest
import torch

from t2diff.diffusion.energy import energy_score


def test_hand_computed_values() -> None:
    # K = 2, one 1-d outcome: draws 0 and 2 around y = 1 -> mean |X - y| = 1, |X - X'| = 2, ES = 1 - 0.5 * 2 = 0
    assert float(energy_score(torch.tensor([[[0.0]], [[2.0]]]), torch.tensor([[1.0]]))) == pytest.approx(0.0, abs=1e-6)
    # K = 3 in 2-d, y = 0: draws (3,4), (0,0), (0,1): fit (5 + 0 + 1) / 3 = 2; pairs 5, sqrt(18), 1 -> mean / 2
    draws = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]], [[0.0, 1.0]]])
    want = 2.0 - 0.5 * (5.0 + math.sqrt(18.0) + 1.0) / 3.0
    assert float(energy_score(draws, torch.zeros(1, 2))) == pytest.approx(want, rel=1e-5)
    # the mean over outcomes: the same outcome twice, then beside one with score 0 (draws +-1 around y = 0)
    assert float(energy_score(torch.cat([draws, draws], 1), torch.zeros(2, 2))) == pytest.approx(want, rel=1e-5)
    zero = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]], [[1.0, 0.0]]])  # fit 1, pairs 2, 0, 2 -> 1 - 0.5 * 4 / 3
    mixed = torch.cat([draws, zero], 1)
    assert float(energy_score(mixed, torch.zeros(2, 2))) == pytest.approx((want + 1 - 2 / 3) / 2, rel=1e-5)


def test_gaussian_closed_form_is_minimised_at_the_true_spread() -> None:
    """1-d draws s * eps against y ~ N(0, 1): E ES = sqrt(2 / pi) (sqrt(s^2 + 1) - s / sqrt(2)), minimal at s = 1."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    y = torch.randn(n, 1, generator=g)
    eps = torch.randn(4, n, 1, generator=g)
    got = {}
    for s in (0.0, 0.5, 1.0, 2.0):
        want = math.sqrt(2 / math.pi) * (math.sqrt(s * s + 1) - s / math.sqrt(2))
        got[s] = float(energy_score(s * eps, y))
        assert got[s] == pytest.approx(want, abs=0.01)
    assert min(got, key=got.get) == 1.0


def test_minimising_it_recovers_the_spread_where_squared_error_collapses() -> None:
    """A generator mu + sigma * eps fitted to y ~ N(2, 0.5^2): the energy score learns sigma ~ 0.5, the squared
    error of a draw drives sigma to 0 (one point per condition, the collapse the energy term is there to stop)."""
    g = torch.Generator().manual_seed(1)
    y = 2.0 + 0.5 * torch.randn(1024, 1, generator=g)
    fitted = {}
    for loss_name in ("energy", "squared"):
        mu = torch.zeros(1, requires_grad=True)
        log_sigma = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([mu, log_sigma], lr=0.05)
        torch.manual_seed(2)
        for _ in range(300):
            draws = mu + log_sigma.exp() * torch.randn(4, y.shape[0], 1)  # [K, N, 1]
            loss = energy_score(draws, y) if loss_name == "energy" else (draws - y).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        fitted[loss_name] = (mu.item(), log_sigma.exp().item())
    assert fitted["energy"][0] == pytest.approx(2.0, abs=0.1) and fitted["energy"][1] == pytest.approx(0.5, abs=0.1)
    assert fitted["squared"][0] == pytest.approx(2.0, abs=0.1) and fitted["squared"][1] < 0.1


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="K >= 2"):
        energy_score(torch.zeros(1, 3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="draws"):
        energy_score(torch.zeros(2, 3, 2), torch.zeros(4, 2))
