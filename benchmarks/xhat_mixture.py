"""Several x_hat samples per user at inference (T2DiffCausal): does reading the generator as a distribution, not one
draw, rank better? An inner product with one user vector is a single mode; S draws of the generator give S user
vectors u_s (eval_seed = 0..S-1, each batch-independent), read four ways:

- single: u_0, the served model;
- mean-vector: the mean of the u_s (one vector again: an ensemble over the noise);
- mixture: p(i) = (1/S) sum_s softmax(u_s . v)_i, a mixture of softmaxes (can put mass on several modes);
- max: max_s u_s . v_i (the multi-interest retrieval rule: each item scored by its best vector).

    .venv/bin/python benchmarks/xhat_mixture.py runs/t2diff-causal-paper-s2025 --samples 16 \\
        --against runs/t2diff-causal-paper-nodiff-s2025 --name xhat_mixture_paper

Ranks over all items, ties pessimistic and a repeated target masked to the worst rank (the evaluator's rules),
on the run's test split, seen items masked and not; paired z of every reading against the single draw and, with
``--against``, against another run's own test ranks (e.g. the model trained without the generator). A diagnostic
on the test split: nothing here selects a model. Writes ``benchmarks/results/<name>.md`` / ``.json``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from t2diff.data.batching import make_batch
from t2diff.metrics import ranks_from_scores
from t2diff.paired import paired, per_example
from t2diff.provenance import markdown_table, provenance, write_json, write_markdown
from t2diff.run import build_from_checkpoint, build_split
from t2diff.run_ranks import run_test_ranks

METRICS = ("ndcg@10", "recall@20")


def ranks_masked(s: torch.Tensor, target: torch.Tensor, seen: list[np.ndarray] | None) -> np.ndarray:
    """The evaluator's ranks (``t2diff.metrics.ranks_from_scores``) of scores s [B, I+1] (column 0 the pad), seen
    items masked to -inf first (a target among them gets the worst rank). [B]"""
    if seen is not None:
        s = s.clone()
        for r, it in enumerate(seen):
            it = it[it > 0]
            if len(it):
                s[r, torch.from_numpy(it.astype(np.int64))] = -torch.inf
    return ranks_from_scores(s, target)[0].numpy()


def served_xhat(model, keys: torch.Tensor, out: list[torch.Tensor], c: torch.Tensor, x_n: torch.Tensor
                ) -> torch.Tensor:
    """The served chain's x_hat [B, D] for summaries c and last behaviours x_n [B, D] under ``keys`` [B], appended
    to ``out`` (the draws' own spread is read from it)."""
    out.append(model.sample_xhat(c, x_n, keys))
    return out[-1]


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--against", type=Path, help="another run on the same test examples (its own test ranks)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), help="another chain at inference (default: the served one)")
    p.add_argument("--steps", type=int, help="its number of steps (ddpm: T)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="xhat_mixture")
    args = p.parse_args(argv)
    if args.samples < 2:
        p.error("--samples must be >= 2")
    prov = provenance(argv, __file__)
    torch.set_num_threads(args.threads)
    model, cfg, ds = build_from_checkpoint(args.run)
    if model.cfg.__class__.__name__ != "T2DiffCausalConfig" or not model.cfg.diffusion:
        p.error(f"{args.run}: a T2DiffCausal run with diffusion is needed")
    if args.sampler:
        model.set_sampler(args.sampler, args.steps)
    test = build_split(cfg, ds).test
    items = model.item_embeddings()  # [I+1, D]
    base_cfg = model.cfg
    readings: dict[str, dict[bool, list[np.ndarray]]] = {k: {True: [], False: []}
                                                         for k in ("single", "mean-vector", "mixture", "max")}
    cos: list[np.ndarray] = []
    xcos: list[np.ndarray] = []  # the generator's own spread: cosine of a draw's x_hat to draw 0's
    for a in range(0, len(test), args.batch_size):
        u, j = test.users[a: a + args.batch_size], test.positions[a: a + args.batch_size]
        batch = make_batch(ds, u, j, cfg.data.max_len)
        vecs, xhats = [], []
        for s in range(args.samples):
            model.cfg = replace(base_cfg, eval_seed=s)
            keys = model.eval_keys(batch.seq)[:, -1]  # [B]: the served chain's noise for this draw
            # the served user vector ("chain" samples exactly this), its x_hat recorded in the same pass
            vecs.append(model.user_embeddings_from(batch, "fn", partial(served_xhat, model, keys, xhats)))  # [B, D]
        model.cfg = base_cfg
        v, xh = torch.stack(vecs), torch.stack(xhats)  # [S, B, D] each
        cos.append(torch.nn.functional.cosine_similarity(v[1:], v[:1], dim=-1).mean(0).numpy())
        xcos.append(torch.nn.functional.cosine_similarity(xh[1:], xh[:1], dim=-1).mean(0).numpy())
        logits = v @ items.T  # [S, B, I+1]
        scores = {"single": logits[0], "mean-vector": v.mean(0) @ items.T,
                  "mixture": torch.logsumexp(torch.log_softmax(logits[..., 1:], -1), 0),
                  "max": logits.max(0).values}
        scores["mixture"] = torch.cat([torch.full_like(scores["mixture"][:, :1], -torch.inf), scores["mixture"]], 1)
        seen = [ds.history(int(uu))[:int(jj)] for uu, jj in zip(u, j, strict=True)]
        for k, sc in scores.items():
            for masked in (True, False):
                readings[k][masked].append(ranks_masked(sc, batch.target, seen if masked else None))
    ranks = {k: {m: np.concatenate(x) for m, x in d.items()} for k, d in readings.items()}
    other = run_test_ranks(args.against) if args.against else None
    if other is not None and not (np.array_equal(other.users, test.users)
                                  and np.array_equal(other.positions, test.positions)):
        p.error(f"{args.against} holds other test examples than {args.run}")
    rows, record = [], {}
    for masked in (False, True):
        for k, d in ranks.items():
            per = per_example(d[masked], METRICS)
            base = per_example(ranks["single"][masked], METRICS)
            vs = {m: paired(per[m], base[m]) for m in METRICS}
            vo = ({m: paired(per[m], per_example(other.ranks(masked), METRICS)[m]) for m in METRICS}
                  if other is not None else None)
            record[f"{k}|{'masked' if masked else 'unmasked'}"] = {
                "metrics": {m: float(per[m].mean()) for m in METRICS}, "vs_single": vs, "vs_against": vo}
            rows.append(["yes" if masked else "no", k, *[f"{per[m].mean():.4f}" for m in METRICS],
                         *[f"{vs[m]['diff']:+.4f} (z {vs[m]['z']:+.2f})" if k != "single" else "" for m in METRICS],
                         *([f"{vo[m]['diff']:+.4f} (z {vo[m]['z']:+.2f})" for m in METRICS] if vo else [])])
    c, xc = float(np.concatenate(cos).mean()), float(np.concatenate(xcos).mean())
    ref = ([f"{m} - against" for m in METRICS] if other is not None else [])
    md = "\n".join([
        f"# {args.samples} x_hat draws per user: `{args.run}`", "",
        f"{len(test)} test examples, protocol `{cfg.data.protocol}`; draws are eval_seed 0..{args.samples - 1} of "
        f"the served sampler ({base_cfg.sampler}, {base_cfg.inference_steps} steps). Mean cosine of a draw's user "
        f"vector to draw 0's: {c:.4f}; of a draw's x_hat to draw 0's: {xc:.4f}."
        + (f" `against` = `{args.against}`'s own test ranks." if other else ""),
        "", markdown_table(["seen masked", "reading", *METRICS, *[f"{m} - single" for m in METRICS], *ref], rows)])
    write_json(args.out / f"{args.name}.json", {"run": str(args.run), "samples": args.samples,
                                                 "mean_cosine_to_draw0": c, "xhat_mean_cosine_to_draw0": xc,
                                                 "readings": record,
                                                 "against": str(args.against) if other else None}, prov)
    write_markdown(args.out / f"{args.name}.md", md + "\n", prov)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
