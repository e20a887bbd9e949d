"""Diagnostics of T2Diff's diffusion module (paper Figure 4).

``diffusion_cosine_trace`` runs the inference reverse chain (Alg. 2) on batches whose next item is known and
records, at every reverse step t = T..1, the cosine similarity between the approximator's z0_hat and the true
z0 (the drift, or X_{2:n+1} without drift preparation). It also records the *one-step* prediction from the
noised true z0 at the same t (what training sees, Alg. 1), so the train / inference mismatch is measurable.
``write_trace`` writes the rows as CSV and a PNG plot.

``xhat_source_metrics`` ranks a split with x_hat_{n+1} taken from other sources than the reverse chain (none,
the last behaviour, one step from the noised *true* z0 as in training): how much the tower relies on x_hat, and
how much of the training-time x_hat (which sees the target) is lost at inference.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from t2diff.batch import Batch
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Examples
from t2diff.evaluate import rank_examples
from t2diff.models.t2diff import T2Diff

TRACE_COLUMNS = ("t", "iteration", "n", "cos_last_mean", "cos_last_p10", "cos_last_p50", "cos_last_p90",
                 "cos_seq_mean", "onestep_cos_last_mean", "onestep_cos_seq_mean")


def _cos_seq(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Cosine of whole sequences a, b [B, L, D] over the masked positions [B, L] -> [B]."""
    m = mask.unsqueeze(-1)
    return F.cosine_similarity((a * m).flatten(1), (b * m).flatten(1), dim=-1)


@torch.no_grad()
def diffusion_cosine_trace(model: T2Diff, batches: Iterable[Batch]) -> list[dict[str, float]]:
    """Per reverse step t (T first), the cosine similarity of z0_hat to the true z0 over all examples of
    ``batches`` with a known target: mean and 10/50/90th percentiles at the last position (the drift that
    makes x_hat_{n+1}, eq. 18), the mean over the whole sequence, and the same for the one-step prediction
    from q(z_t | z0). One row per step the model's sampler visits (every t = T..1 for ddpm). Runs in eval mode
    with the model's seeded generator; restores the mode after."""
    if not model.cfg.diffusion.enabled:
        raise ValueError("diffusion_cosine_trace needs a T2Diff model with diffusion.enabled=true")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    timesteps = list(model.sampler.timesteps)  # chain order, largest t first
    last: dict[int, list[Tensor]] = {t: [] for t in timesteps}
    seq_c: dict[int, list[Tensor]] = {t: [] for t in timesteps}
    one_last: dict[int, list[Tensor]] = {t: [] for t in timesteps}
    one_seq: dict[int, list[Tensor]] = {t: [] for t in timesteps}
    try:
        for batch in batches:
            batch = batch.to(device)
            keep = batch.target > 0
            if not bool(keep.any()):
                continue
            batch = Batch(**{k: v[keep] for k, v in vars(batch).items()})
            xd = model.item_inputs(batch.seq)  # X_{1:n} [B, L, D]
            z0 = model.diffusion_target(xd, model.item_inputs(batch.target))  # true z0 (eq. 10–11)
            mask = model.kl_mask(batch)  # [B, L]
            gen = model.eval_generator(device)
            _, trace = model.sample_xhat(xd, batch.seq, trace=True)  # Alg. 2, exactly as evaluated
            for t, z0_hat in trace:
                last[t].append(F.cosine_similarity(z0_hat[:, -1], z0[:, -1], dim=-1).cpu())
                seq_c[t].append(_cos_seq(z0_hat, z0, mask).cpu())
            for t in reversed(timesteps):  # one-step prediction from the noised true z0 (Alg. 1), t ascending
                noise = torch.randn(xd.shape, generator=gen, device=device, dtype=xd.dtype)
                tt = torch.full((xd.shape[0],), t, dtype=torch.long, device=device)
                z0_hat = model.approximate(model.schedule.q_sample(z0, tt, noise), xd, tt)
                one_last[t].append(F.cosine_similarity(z0_hat[:, -1], z0[:, -1], dim=-1).cpu())
                one_seq[t].append(_cos_seq(z0_hat, z0, mask).cpu())
    finally:
        model.train(was_training)
    rows: list[dict[str, float]] = []
    if not last[timesteps[0]]:
        return rows
    for i, t in enumerate(timesteps):
        c = torch.cat(last[t])
        q = torch.quantile(c, torch.tensor([0.1, 0.5, 0.9]))
        rows.append({
            "t": t,
            "iteration": i + 1,
            "n": int(c.numel()),
            "cos_last_mean": float(c.mean()),
            "cos_last_p10": float(q[0]),
            "cos_last_p50": float(q[1]),
            "cos_last_p90": float(q[2]),
            "cos_seq_mean": float(torch.cat(seq_c[t]).mean()),
            "onestep_cos_last_mean": float(torch.cat(one_last[t]).mean()),
            "onestep_cos_seq_mean": float(torch.cat(one_seq[t]).mean()),
        })
    return rows


def write_trace(rows: list[dict[str, float]], out_dir: str | Path) -> dict[str, Path]:
    """Write ``rows`` from ``diffusion_cosine_trace`` to ``out_dir/diffusion_cosine_trace.csv`` and a plot
    ``.png`` (cosine against reverse iteration, Figure 4). Returns the written paths; the PNG is skipped with
    a warning when matplotlib is not installed (``pip install t2diff[plot]``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"csv": out / "diffusion_cosine_trace.csv"}
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(TRACE_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in TRACE_COLUMNS})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed; wrote the CSV only", stacklevel=2)
        return paths
    it = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(it, [r["cos_last_p10"] for r in rows], [r["cos_last_p90"] for r in rows], alpha=0.25,
                    label="reverse chain, last position, p10-p90")
    ax.plot(it, [r["cos_last_mean"] for r in rows], label="reverse chain, last position, mean")
    ax.plot(it, [r["cos_seq_mean"] for r in rows], label="reverse chain, whole sequence, mean")
    ax.plot(it, [r["onestep_cos_last_mean"] for r in rows], "--",
            label="one step from q(z_t|z0), last position")
    ax.set_xlabel("reverse iteration (t = T .. 1)")
    ax.set_ylabel("cosine(z0_hat, z0)")
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths["png"] = out / "diffusion_cosine_trace.png"
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def parse_xhat_source(name: str, steps: int) -> tuple[str, int]:
    """'chain' | 'none' | 'last-item' | 'onestep@R' (1 <= R <= T) -> (kind, R or 0); ValueError otherwise."""
    if name in ("chain", "none", "last-item"):
        return name, 0
    kind, _, r = name.partition("@")
    if kind == "onestep" and r.isdigit() and 1 <= int(r) <= steps:
        return kind, int(r)
    raise ValueError(f"x_hat source {name!r}: use chain, none, last-item or onestep@R with 1 <= R <= {steps}")


@torch.no_grad()
def xhat_source_metrics(model: T2Diff, ds: PreparedDataset, ex: Examples, max_len: int, ks: list[int],
                        sources: list[str], batch_size: int = 512, seed: int = 0,
                        device: str = "cpu") -> dict[str, dict[str, float]]:
    """Full-ranking metrics of ``ex`` (examples with a known target) for each x_hat source:

    - ``chain``: Alg. 2 from noise, exactly what evaluation and serving use;
    - ``none``: no x_hat token in the session (the mixed-attention module alone, same weights);
    - ``last-item``: x_hat = X_n (zero drift), no diffusion information;
    - ``onestep@R``: one approximator step from q(z_R | true z0) (eq. 14-15), the x_hat that training feeds the
      tower (Alg. 1): it sees the target, so it is an oracle, and its gap to ``chain`` is the train / inference
      mismatch.
    """
    if not model.cfg.diffusion.enabled:
        raise ValueError("xhat_source_metrics needs a T2Diff model with diffusion.enabled=true")
    parsed = [parse_xhat_source(s, model.cfg.diffusion.steps) for s in sources]
    gen = torch.Generator(device=device)

    def user_fn(batch: Batch, kind: str, r: int) -> Tensor:  # e_u [B, D'] with x_hat from one source
        if bool((batch.target <= 0).any()):
            raise ValueError("xhat_source_metrics needs a known target (> 0) for every example")
        x = model.item_inputs(batch.seq)  # X_{1:n} [B, L, D]
        if kind == "chain":
            x_hat = model.sample_xhat(x, batch.seq)
        elif kind == "none":
            x_hat = None
        elif kind == "last-item":
            x_hat = x[:, -1]  # zero drift: Slice(0 + X_{1:n}); W/O DP: the last behaviour itself
        else:
            z0 = model.diffusion_target(x, model.item_inputs(batch.target))  # uses the target
            rr = torch.full((x.shape[0],), r, dtype=torch.long, device=x.device)
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            x_hat = model.utilize(model.approximate(model.schedule.q_sample(z0, rr, noise), x, rr), x)
        return model.mixed_attention(x, batch, x_hat)

    out: dict[str, dict[str, float]] = {}
    for name, (kind, r) in zip(sources, parsed, strict=True):
        gen.manual_seed(seed)  # each source's noise depends on (seed, batch order) only, not on the other sources
        out[name] = rank_examples(model, ds, ex, max_len, batch_size, device=device,
                                  user_fn=lambda b, kind=kind, r=r: user_fn(b, kind, r)).metrics(ks)
    return out
