"""Is a trained ContrastVAE's latent used? Its loss terms on training windows, checkpoint by checkpoint.

    .venv/bin/python benchmarks/contrastvae_probe.py runs/contrastvae-loo/best.pt runs/contrastvae-loo/last.pt \\
        --name contrastvae_probe

For each checkpoint: the optimizer steps it had taken (the KL anneal counter), then, in training mode on the same
``--windows`` training windows (seeded), the reconstruction term (summed over the views), the KL term (mean over
batch and positions, as trained) and its weight, InfoNCE beside its chance value log(2B - 1), and the KL per real
(non-padding) position. A KL per position near zero with InfoNCE at chance is posterior collapse: the decoder
scores items without the history's latent. Writes benchmarks/results/<name>.{md,json}.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from t2diff.data.batching import make_batch
from t2diff.provenance import markdown_table, provenance, write_json, write_markdown
from t2diff.run import build_from_checkpoint, build_split


def probe(ckpt: Path, windows: int, seed: int) -> dict[str, float]:
    model, cfg, ds = build_from_checkpoint(ckpt)
    if cfg.model["name"] != "contrastvae":
        raise SystemExit(f"{ckpt}: a {cfg.model['name']} checkpoint, not contrastvae")
    split = build_split(cfg, ds)
    ex = split.train_examples(np.random.default_rng(seed), True, cfg.data.max_len, 1)
    idx = np.random.default_rng(seed + 1).choice(len(ex), min(windows, len(ex)), replace=False)
    b = make_batch(ds, ex.users[idx], ex.positions[idx], cfg.data.max_len)
    steps = int(model.anneal_step)
    model.train()  # the loss as trained (dropout, the sampled view); no gradient, the counter is restored
    torch.manual_seed(seed)
    with torch.no_grad():
        _, parts = model.loss(b)
        mu, lv = model.latent(b.seq)  # [B, L, D] each
        real = b.seq > 0  # [B, L]
        kl_real = (-0.5 * (1.0 + lv - mu.pow(2) - lv.exp()).sum(-1))[real].mean().item()
    model.anneal_step.fill_(steps)
    return {"steps": steps, **parts, "nce_chance": math.log(2 * len(idx) - 1), "kl_per_real_position": kl_real,
            "windows": len(idx)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="contrastvae_probe")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    prov = provenance(argv, __file__)
    rows = {str(c): probe(c, args.windows, args.seed) for c in args.checkpoints}
    cols = ["steps", "rec", "kl", "kl_weight", "kl_per_real_position", "nce", "nce_chance"]
    md = "\n".join([
        "# ContrastVAE: are the latents used?", "",
        f"Loss terms in training mode on {args.windows} training windows (seed {args.seed}); rec is summed over "
        "the views, kl is the trained KL term (mean over batch and positions, padding included).", "",
        markdown_table(["checkpoint", *cols],
                       [[f"`{c}`", *(f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "-") for k in cols)]
                        for c, r in rows.items()])]) + "\n"
    write_json(args.out / f"{args.name}.json", {"checkpoints": rows}, prov)
    write_markdown(args.out / f"{args.name}.md", md, prov)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
