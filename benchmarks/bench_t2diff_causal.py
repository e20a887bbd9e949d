"""T2DiffCausal (ours, issue 14) beside SASRec in one run: quality and user-tower latency for each inference chain.

Quality (needs trained runs): each run's selected checkpoint ranks its protocol's test split over all items, with
seen items masked and not; for T2DiffCausal once per chain (DDIM over 1 / 2 / 5 / 10 / 50 steps and DDPM over all
T, chosen at inference without retraining) and with no generator at all (``none``: c_j is the crossing's query,
same weights). Beside SASRec: the paired difference of per-example NDCG@10 and Recall@20 with its standard error
(same test examples, so SE = std(d) / sqrt(n)), and z = difference / SE.

Latency: ``user_embeddings`` on a batch of full-length histories, one torch thread, process CPU time per user
(median over interleaved repeats), for SASRec and for T2DiffCausal at each chain, from the runs' configs (the
weights do not change the time).

    .venv/bin/python benchmarks/bench_t2diff_causal.py --sasrec runs/sasrec-200 --variant runs/t2diff-causal-200
    .venv/bin/python benchmarks/bench_t2diff_causal.py --latency-only      # random weights, configs/ml-1m/*-200

Writes benchmarks/results/t2diff_causal.{json,md} (``--name``), with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2diff.batch import Batch
from t2diff.config import load_config, model_config
from t2diff.evaluate import rank_examples
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.paired import paired, per_example
from t2diff.provenance import markdown_table, provenance, write_json, write_markdown
from t2diff.registry import get_model_class
from t2diff.run import build_from_checkpoint, build_split

REPO = Path(__file__).resolve().parents[1]
CHAINS: list[tuple[str, int | None]] = [("ddim", 1), ("ddim", 2), ("ddim", 5), ("ddim", 10), ("ddim", 50),
                                        ("ddpm", None)]


def chain_name(name: str, steps: int | None, t_max: int) -> str:
    return f"{name} {steps or t_max}"


def quality(sasrec: Path, variant: Path, batch_size: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base: dict[bool, dict[str, np.ndarray]] = {}
    m, cfg, ds = build_from_checkpoint(sasrec)
    test = build_split(cfg, ds).test
    for masked in (True, False):
        r = rank_examples(m, ds, test, cfg.data.max_len, batch_size, mask_seen=masked)
        base[masked] = per_example(r.ranks)
        rows.append({"model": "sasrec", "chain": "-", "masked": masked, "n": len(r),
                     **{k: float(v.mean()) for k, v in base[masked].items()}})
    v, vcfg, vds = build_from_checkpoint(variant)
    vtest = build_split(vcfg, vds).test
    if not (np.array_equal(vtest.users, test.users) and np.array_equal(vtest.positions, test.positions)):
        raise SystemExit(f"{sasrec} and {variant} do not share their test examples (other data or protocol)")
    t_max = v.cfg.steps
    default = (v.cfg.sampler, v.cfg.inference_steps)
    settings: list[tuple[str, int | None]] = [*CHAINS, ("none", None)]
    for name, steps in settings:
        if name == "none":
            def fn(b: Batch) -> torch.Tensor:
                return v.user_embeddings_from(b, "none")  # the same weights, no generator
        else:
            v.set_sampler(name, steps)
            fn = v.user_embeddings
        for masked in (True, False):
            r = rank_examples(v, vds, vtest, vcfg.data.max_len, batch_size, mask_seen=masked, user_fn=fn)
            pe = per_example(r.ranks)
            label = "no generator (c_j as query)" if name == "none" else chain_name(name, steps, t_max)
            is_default = (name, steps or t_max) == (default[0], default[1])
            rows.append({"model": "t2diff_causal", "chain": label + (" (default)" if is_default else ""),
                         "masked": masked, "n": len(r), **{k: float(x.mean()) for k, x in pe.items()},
                         **{f"vs_sasrec_{k}": paired(pe[k], base[masked][k]) for k in pe}})
    return rows


def build(config: str, overrides: list[str], info: DataInfo) -> SeqRecModel:
    cfg = load_config(REPO / config, overrides)
    return get_model_class(cfg.model["name"])(model_config(cfg), info).eval()


def latency(sasrec_cfg: str, variant_cfg: str, batch: int, repeats: int, max_len: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    info = DataInfo(num_items=3706, num_users=6040, max_len=max_len)
    seq = torch.randint(1, info.num_items + 1, (batch, max_len), generator=torch.Generator().manual_seed(1))
    b = Batch.from_histories(seq.tolist(), max_len)
    models: dict[str, tuple[SeqRecModel, tuple[str, int | None] | None]] = {
        "sasrec": (build(sasrec_cfg, [], info), None)}
    v = build(variant_cfg, [], info)
    for name, steps in CHAINS:
        models[f"t2diff_causal {chain_name(name, steps, v.cfg.steps)}"] = (v, (name, steps))
    models["t2diff_causal no diffusion"] = (build(variant_cfg, ["model.diffusion=false"], info), None)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for _ in range(repeats + 1):  # round robin; the first round is a warm-up
            for key, (m, chain) in models.items():
                if chain is not None:
                    m.set_sampler(*chain)
                c0 = time.process_time()
                m.user_embeddings(b)
                times[key].append(time.process_time() - c0)
    ref = statistics.median(times["sasrec"][1:])
    return [{"model": k, "ms_per_user": 1000 * statistics.median(t[1:]) / batch,
             "vs_sasrec": statistics.median(t[1:]) / ref} for k, t in times.items()]


def render(q: list[dict[str, Any]], lat: list[dict[str, Any]], args: argparse.Namespace) -> str:
    md = ["# T2DiffCausal (ours) beside SASRec", ""]
    if q:
        md += [f"Test split of `{args.sasrec}` and `{args.variant}` (same examples), full ranking. Paired "
               "differences to SASRec with their standard errors (z >= 2: the variant wins by 2 SE).", ""]
        table = []
        for r in q:
            d = [r.get(f"vs_sasrec_{k}") for k in ("ndcg@10", "recall@20")]
            table.append([r["model"], r["chain"], "yes" if r["masked"] else "no", f"{r['ndcg@10']:.4f}",
                          f"{r['recall@20']:.4f}",
                          *(f"{x['diff']:+.4f} ± {x['se']:.4f} (z {x['z']:+.1f})" if x else "-" for x in d)])
        md += [markdown_table(["model", "chain", "seen masked", "NDCG@10", "Recall@20", "NDCG@10 - SASRec",
                               "Recall@20 - SASRec"], table), ""]
    md += [f"User tower, one thread, batches of {args.batch} histories of length {args.max_len} (random weights), "
           "process CPU time per user, median of interleaved repeats:", "",
           markdown_table(["model", "ms / user", "x SASRec"],
                          [[r["model"], f"{r['ms_per_user']:.3f}", f"{r['vs_sasrec']:.2f}"] for r in lat])]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sasrec", type=Path, help="trained SASRec run (quality part)")
    p.add_argument("--variant", type=Path, help="trained T2DiffCausal run on the same data and protocol")
    p.add_argument("--latency-only", action="store_true")
    p.add_argument("--sasrec-config", default="configs/ml-1m/sasrec-200.yaml")
    p.add_argument("--variant-config", default="configs/ml-1m/t2diff-causal-200.yaml")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="t2diff_causal")
    args = p.parse_args(argv)
    prov = provenance(argv, __file__)
    q: list[dict[str, Any]] = []
    if not args.latency_only:
        if args.sasrec is None or args.variant is None:
            p.error("--sasrec and --variant are needed (or --latency-only)")
        torch.set_num_threads(2)
        q = quality(args.sasrec, args.variant, args.eval_batch_size)
    lat = latency(args.sasrec_config, args.variant_config, args.batch, args.repeats, args.max_len)
    write_json(args.out / f"{args.name}.json", {"quality": q, "latency": lat}, prov)
    md = render(q, lat, args)
    write_markdown(args.out / f"{args.name}.md", md, prov)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
