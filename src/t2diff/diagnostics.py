"""Diagnostics of T2Diff's diffusion module (paper Figure 4).

``diffusion_cosine_trace`` runs the inference reverse chain (Alg. 2) on batches whose next item is known and
records, at every reverse step t = T..1, the cosine similarity between the approximator's z0_hat and the true
z0 (the drift, or X_{2:n+1} without drift preparation). It also records the *one-step* prediction from the
noised true z0 at the same t (what training sees, Alg. 1), so the train / inference mismatch is measurable, and
the chain's *state* after each step (z_{t-1}, from noise to the returned z_0; the other reading of the paper's
"reversing z_r back to z_0"): its cosine rises along any chain whose output carries the target, where z0_hat's
need not (a sampler's first x0-prediction is the conditional mean, the closest single guess). Beside the cosine it
records the mean inner product <z0_hat, z0> and the norms ||z0_hat||, ||z0||: a sampler that never sees z0 draws
z0_hat independently of z0 given the condition c, so for an exact sampler E<z0_hat, z0> = <E[z0_hat|c], E[z0|c]>
is the same at every step, while ||z0_hat|| grows from the mean's norm to a sample's; its cosine then falls.
``write_trace`` writes the rows as CSV and a PNG plot.

``xhat_source_metrics`` ranks a split with x_hat_{n+1} taken from other sources than the reverse chain (none,
the last behaviour, one step from the noised *true* z0 as in training): how much the tower relies on x_hat, and
how much of the training-time x_hat (which sees the target) is lost at inference.

Both work for the faithful T2Diff and for our T2DiffCausal (``models.t2diff_causal``), whose generator makes one
vector per position: its trace compares z0_hat with the true next behaviour (or drift) at the last position
only, and its sources are the same four, with ``none`` = no generator (c_j is the crossing's query).
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
from t2diff.models.t2diff_causal import T2DiffCausal

DiffusionModel = T2Diff | T2DiffCausal


def has_diffusion(model: object) -> bool:
    """Whether ``model`` is a T2Diff or T2DiffCausal with its generator switched on."""
    if isinstance(model, T2Diff):
        return model.cfg.diffusion.enabled
    return isinstance(model, T2DiffCausal) and model.cfg.diffusion


def diffusion_steps(model: DiffusionModel) -> int:
    """T, the training steps of the model's schedule."""
    return model.schedule.steps

TRACE_COLUMNS = ("t", "iteration", "n", "cos_last_mean", "cos_last_p10", "cos_last_p50", "cos_last_p90",
                 "cos_seq_mean", "onestep_cos_last_mean", "onestep_cos_seq_mean", "state_cos_last_mean",
                 "dot_last_mean", "norm_last_mean", "z0_norm_mean")
KEYS = ("last", "seq", "one_last", "one_seq", "state_last", "dot_last", "norm_last", "z0_norm")


def _dot_norms(out: dict[str, dict[int, Tensor]], t: int, z0_hat: Tensor, z0: Tensor) -> None:
    """Record <z0_hat, z0>, ||z0_hat|| and ||z0|| at step t for vectors [B, D]: a cosine can fall along a chain
    while the inner product stays put, if the prediction only grows in norm."""
    out["dot_last"][t] = (z0_hat * z0).sum(-1)
    out["norm_last"][t] = z0_hat.norm(dim=-1)
    out["z0_norm"][t] = z0.norm(dim=-1)


def _cos_seq(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Cosine of whole sequences a, b [B, L, D] over the masked positions [B, L] -> [B]."""
    m = mask.unsqueeze(-1)
    return F.cosine_similarity((a * m).flatten(1), (b * m).flatten(1), dim=-1)


def _faithful_trace(model: T2Diff, batch: Batch, gen: torch.Generator | None, timesteps: list[int]
                    ) -> dict[str, dict[int, Tensor]]:
    """The faithful T2Diff: z0 is the whole drift sequence; cosines at the last position and over the sequence."""
    xd = model.item_inputs(batch.seq)  # X_{1:n} [B, L, D]
    z0 = model.diffusion_target(xd, model.item_inputs(batch.target))  # true z0 (eq. 10–11)
    mask = model.kl_mask(batch)  # [B, L]
    out: dict[str, dict[int, Tensor]] = {k: {} for k in KEYS}
    states: list[tuple[int, Tensor]] = []
    _, trace = model.sample_xhat(xd, batch.seq, trace=True, states=states)  # Alg. 2, exactly as evaluated
    for t, z0_hat in trace:
        out["last"][t] = F.cosine_similarity(z0_hat[:, -1], z0[:, -1], dim=-1)
        out["seq"][t] = _cos_seq(z0_hat, z0, mask)
        _dot_norms(out, t, z0_hat[:, -1], z0[:, -1])
    for t, z in states:
        out["state_last"][t] = F.cosine_similarity(z[:, -1], z0[:, -1], dim=-1)
    for t in reversed(timesteps):  # one-step prediction from the noised true z0 (Alg. 1), t ascending
        noise = torch.randn(xd.shape, generator=gen, device=xd.device, dtype=xd.dtype)
        tt = torch.full((xd.shape[0],), t, dtype=torch.long, device=xd.device)
        z0_hat = model.approximate(model.schedule.q_sample(z0, tt, noise), xd, tt)
        out["one_last"][t] = F.cosine_similarity(z0_hat[:, -1], z0[:, -1], dim=-1)
        out["one_seq"][t] = _cos_seq(z0_hat, z0, mask)
    return out


def _causal_trace(model: T2DiffCausal, batch: Batch, gen: torch.Generator | None, timesteps: list[int]
                  ) -> dict[str, dict[int, Tensor]]:
    """T2DiffCausal: z0 is one vector, the next behaviour (or drift) after the last position."""
    x, c = model.backbone(batch.seq, last_only=True)
    x_prev, c = x[:, -1], c[:, 0]  # [B, D]
    z0 = model.diffusion_x0(x_prev, model.item_inputs(batch.target))  # [B, D]
    out: dict[str, dict[int, Tensor]] = {k: {} for k in KEYS}
    states: list[tuple[int, Tensor]] = []
    _, trace = model.sample_xhat(c, x_prev, model.eval_keys(batch.seq)[:, -1], trace=True, states=states)
    for t, z0_hat in trace:
        out["last"][t] = out["seq"][t] = F.cosine_similarity(z0_hat, z0, dim=-1)
        _dot_norms(out, t, z0_hat, z0)
    for t, z in states:
        out["state_last"][t] = F.cosine_similarity(z, z0, dim=-1)
    for t in reversed(timesteps):
        noise = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
        tt = torch.full((z0.shape[0],), t, dtype=torch.long, device=z0.device)
        z0_hat = model.denoiser(model.schedule.q_sample(z0, tt, noise), tt, c)
        out["one_last"][t] = out["one_seq"][t] = F.cosine_similarity(z0_hat, z0, dim=-1)
    return out


@torch.no_grad()
def diffusion_cosine_trace(model: DiffusionModel, batches: Iterable[Batch]) -> list[dict[str, float]]:
    """Per reverse step t (T first), the cosine similarity of z0_hat to the true z0 over all examples of
    ``batches`` with a known target: mean and 10/50/90th percentiles at the last position (the drift that
    makes x_hat_{n+1}, eq. 18), the mean over the whole sequence, and the same for the one-step prediction
    from q(z_t | z0). One row per step the model's sampler visits (every t = T..1 for ddpm). Runs in eval mode;
    the one-step noise comes from a generator seeded with the model's eval seed for each batch; restores the mode
    after."""
    if not has_diffusion(model):
        raise ValueError("diffusion_cosine_trace needs a T2Diff model with diffusion.enabled=true")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    timesteps = list(model.sampler.timesteps)  # chain order, largest t first
    acc: dict[str, dict[int, list[Tensor]]] = {k: {t: [] for t in timesteps} for k in KEYS}
    seed = model.cfg.diffusion.eval_seed if isinstance(model, T2Diff) else model.cfg.eval_seed
    try:
        for batch in batches:
            batch = batch.to(device)
            keep = batch.target > 0
            if not bool(keep.any()):
                continue
            batch = Batch(**{k: v[keep] for k, v in vars(batch).items()})
            gen = None if seed is None else torch.Generator(device=device).manual_seed(int(seed))  # per batch
            if isinstance(model, T2DiffCausal):
                got = _causal_trace(model, batch, gen, timesteps)
            else:
                got = _faithful_trace(model, batch, gen, timesteps)
            for key, per_t in got.items():
                for t, v in per_t.items():
                    acc[key][t].append(v.cpu())
    finally:
        model.train(was_training)
    rows: list[dict[str, float]] = []
    if not acc["last"][timesteps[0]]:
        return rows
    for i, t in enumerate(timesteps):
        c = torch.cat(acc["last"][t])
        q = torch.quantile(c, torch.tensor([0.1, 0.5, 0.9]))
        rows.append({
            "t": t,
            "iteration": i + 1,
            "n": int(c.numel()),
            "cos_last_mean": float(c.mean()),
            "cos_last_p10": float(q[0]),
            "cos_last_p50": float(q[1]),
            "cos_last_p90": float(q[2]),
            "cos_seq_mean": float(torch.cat(acc["seq"][t]).mean()),
            "onestep_cos_last_mean": float(torch.cat(acc["one_last"][t]).mean()),
            "onestep_cos_seq_mean": float(torch.cat(acc["one_seq"][t]).mean()),
            "state_cos_last_mean": float(torch.cat(acc["state_last"][t]).mean()),
            "dot_last_mean": float(torch.cat(acc["dot_last"][t]).mean()),
            "norm_last_mean": float(torch.cat(acc["norm_last"][t]).mean()),
            "z0_norm_mean": float(torch.cat(acc["z0_norm"][t]).mean()),
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
    ax.plot(it, [r["state_cos_last_mean"] for r in rows], ":", label="chain state after the step, last position")
    ax.set_xlabel("reverse iteration (t = T .. 1)")
    ax.set_ylabel("cosine to the true z0")
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
def xhat_source_metrics(model: DiffusionModel, ds: PreparedDataset, ex: Examples, max_len: int, ks: list[int],
                        sources: list[str], batch_size: int = 512, seed: int = 0,
                        device: str = "cpu") -> dict[str, dict[str, float]]:
    """Full-ranking metrics of ``ex`` (examples with a known target) for each x_hat source:

    - ``chain``: Alg. 2 from noise, exactly what evaluation and serving use;
    - ``none``: no x_hat token in the session (the mixed-attention module alone, same weights);
    - ``last-item``: x_hat = X_n (zero drift), no diffusion information;
    - ``onestep@R``: one approximator step from q(z_R | true z0) (eq. 14-15), the x_hat that training feeds the
      tower (Alg. 1): it sees the target, so it is an oracle, and its gap to ``chain`` is the train / inference
      mismatch.

    T2DiffCausal: the same at the last position; ``none`` makes c_j the crossing's query (no generator).
    """
    if not has_diffusion(model):
        raise ValueError("xhat_source_metrics needs a T2Diff model with diffusion.enabled=true")
    parsed = [parse_xhat_source(s, diffusion_steps(model)) for s in sources]
    gen = torch.Generator(device=device)

    def causal_fn(batch: Batch, kind: str, r: int) -> Tensor:
        assert isinstance(model, T2DiffCausal)
        if kind != "onestep":
            return model.user_embeddings_from(batch, kind)

        def oracle(c: Tensor, x_prev: Tensor) -> Tensor:  # one step from q(z_R | true x0): uses the target
            z0 = model.diffusion_x0(x_prev, model.item_inputs(batch.target))
            rr = torch.full((z0.shape[0],), r, dtype=torch.long, device=z0.device)
            noise = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
            return model.utilize(model.denoiser(model.schedule.q_sample(z0, rr, noise), rr, c), x_prev)

        return model.user_embeddings_from(batch, "fn", oracle)

    def user_fn(batch: Batch, kind: str, r: int) -> Tensor:  # e_u [B, D'] with x_hat from one source
        if bool((batch.target <= 0).any()):
            raise ValueError("xhat_source_metrics needs a known target (> 0) for every example")
        if isinstance(model, T2DiffCausal):
            return causal_fn(batch, kind, r)
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
