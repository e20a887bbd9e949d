"""The energy score: a loss that trains a few-step generator to *be a distribution*, not a point.

For K draws X_1..X_K of a generator given one condition and the observed outcome y (Gneiting & Raftery, JASA 2007):

    ES = (1/K) sum_k ||X_k - y||  -  1 / (2 K (K - 1)) sum_{k != k'} ||X_k - X_k'||

Its expectation is minimised exactly when the draws' distribution is the distribution of y given the condition (a
strictly proper scoring rule), so the second term rewards draws that differ by as much as the outcomes do, and no
more. A squared error (the x0-prediction loss) is minimised by the conditional mean instead: a generator trained
through a few-step chain on it collapses onto one output per condition (RESULTS.md, issue 14, session 14).
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-12  # inside the square roots: a finite gradient where two vectors coincide


def _dist(a: Tensor, b: Tensor) -> Tensor:  # [..., D] -> [...]
    return ((a - b).float().pow(2).sum(-1) + _EPS).sqrt()


def energy_score(draws: Tensor, y: Tensor) -> Tensor:
    """Mean over N of the energy score of K >= 2 draws [K, N, D] against the outcomes y [N, D] (fp32)."""
    k = draws.shape[0]
    if draws.dim() != 3 or y.shape != draws.shape[1:]:
        raise ValueError(f"energy_score: draws [K, N, D] and y [N, D], got {tuple(draws.shape)} and {tuple(y.shape)}")
    if k < 2:
        raise ValueError(f"energy_score needs K >= 2 draws per outcome (the spread term), got K = {k}")
    fit = _dist(draws, y[None]).mean(0)  # [N]
    i, j = torch.triu_indices(k, k, offset=1, device=draws.device)  # the K (K - 1) / 2 unordered pairs
    spread = _dist(draws[i], draws[j]).mean(0)  # [N]: the mean over pairs, = the mean over ordered k != k'
    return (fit - 0.5 * spread).mean()
