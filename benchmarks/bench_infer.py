"""Benchmark: per-sample inference time of the user tower (paper Table 4 and the 'Infer Time' column of Table 2).

Times ``model.user_embeddings(batch)`` (no item tower, no ranking) on a batch of full-length histories at ML-1M
sizes (3,706 items, 6 genre tokens per item, history 50) for T2Diff with T = 10, 50, 200 (the full reverse
chain of Alg. 2), T2Diff without the diffusion module (mixed attention only, "T = 0") and SASRec, all in one
run. Models come from the frozen configs (configs/ml-1m/t2diff.yaml, sasrec-paper.yaml) with random weights:
time does not depend on the weights. Repeats are interleaved across models (round robin) so a load change on a
shared machine hits every model alike. Each call is timed twice: process CPU time (the headline number: with
one torch thread it is the single-core compute time, robust to other jobs on a shared box) and wall time. The
median per model is reported, with the ratios to SASRec and to T = 50 next to the paper's (Tesla T4 GPUs).

    .venv/bin/python benchmarks/bench_infer.py [--batch-size 256] [--repeats 5] [--threads 1] [--device cuda]

On a GPU (``--device cuda``) each call is synchronised and the headline is wall time (process CPU time would
only count the kernel launches); the files are then named infer_cuda.{json,md}.

Writes benchmarks/results/infer.json and infer.md (with the command, commit and machine: t2diff.provenance).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from t2diff.batch import Batch
from t2diff.config import load_config, model_config
from t2diff.models.base import DataInfo, SeqRecModel, count_parameters
from t2diff.provenance import provenance, write_json, write_markdown
from t2diff.registry import get_model_class

NUM_ITEMS, MAX_LEN, FEAT_WIDTH, FEAT_TOKENS = 3706, 50, 6, 19  # ML-1M as prepared (cache/ml-1m/meta.json)
PAPER_MS = {"sasrec": 0.56, "mixed-attention": 0.59, "t2diff T=10": 0.22, "t2diff T=50": 0.68, "t2diff T=200": 2.30}


def ml1m_info() -> DataInfo:
    g = torch.Generator().manual_seed(0)
    feats = torch.randint(1, FEAT_TOKENS, (NUM_ITEMS + 1, FEAT_WIDTH), generator=g)
    feats[:, 3:] *= torch.rand(NUM_ITEMS + 1, FEAT_WIDTH - 3, generator=g) < 0.3  # most movies: 1-3 genres
    feats[0] = 0
    return DataInfo(num_items=NUM_ITEMS, num_users=6040, max_len=MAX_LEN, has_time=False, item_features=feats,
                    num_feature_tokens=FEAT_TOKENS)


def build(config: str, overrides: list[str], info: DataInfo) -> SeqRecModel:
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    return get_model_class(cfg.model["name"])(model_config(cfg), info).eval()


def make_batch(b: int) -> Batch:
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(1, NUM_ITEMS + 1, (b, MAX_LEN), generator=g)  # full histories: the worst case
    zeros = torch.zeros(b, dtype=torch.long)
    return Batch(seq=seq, target=zeros, pos_targets=torch.zeros_like(seq), seq_time=torch.zeros_like(seq),
                 target_time=zeros, user=zeros)


def main(argv: list[str] | None = None) -> None:
    prov = provenance(argv, __file__)  # before anything is written: the outputs are tracked files
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: the shared 2-core box)")
    ap.add_argument("--unet-channel-mult", type=int, default=2, help="2: the authors' U-Net (our frozen config)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU: synchronised wall time is the headline)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = ml1m_info()
    unet = f"model.unet_channel_mult={args.unet_channel_mult}"
    models: dict[str, SeqRecModel] = {
        "sasrec": build("configs/ml-1m/sasrec-paper.yaml", [], info),
        "mixed-attention": build("configs/ml-1m/t2diff-mixed-attention.yaml", [], info),
        **{f"t2diff T={t}": build("configs/ml-1m/t2diff.yaml", [f"model.steps={t}", unet], info)
           for t in (10, 50, 200)},
    }
    gpu = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    models = {k: m.to(args.device) for k, m in models.items()}
    batch = make_batch(args.batch_size).to(args.device)
    times: dict[str, list[float]] = {k: [] for k in models}  # process CPU seconds
    walls: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up: allocator, kernels (a small batch keeps it short for T = 200 on CPU)
            m.user_embeddings(make_batch(16).to(args.device))
            if gpu:  # and the timed shape once: cuDNN / cuBLAS pick kernels per shape on first use
                m.user_embeddings(batch)
        sync()
        for r in range(args.repeats):
            for name, m in models.items():
                c0, t0 = time.process_time(), time.perf_counter()
                m.user_embeddings(batch)
                sync()
                walls[name].append(time.perf_counter() - t0)
                times[name].append(walls[name][-1] if gpu else time.process_time() - c0)
            print(f"repeat {r + 1}/{args.repeats} (cpu s / wall s): "
                  + ", ".join(f"{k} {times[k][-1]:.3f}/{walls[k][-1]:.3f}" for k in models), flush=True)

    ms = {k: 1000.0 * statistics.median(v) / args.batch_size for k, v in times.items()}
    wall_ms = {k: 1000.0 * statistics.median(v) / args.batch_size for k, v in walls.items()}
    rows: list[dict[str, Any]] = []
    for name, m in models.items():
        rows.append({
            "model": name, "params": count_parameters(m), "ms_per_sample": round(ms[name], 4),
            "wall_ms_per_sample": round(wall_ms[name], 4),
            "ratio_to_sasrec": round(ms[name] / ms["sasrec"], 2),
            "ratio_to_t50": round(ms[name] / ms["t2diff T=50"], 3),
            "paper_ms_per_sample": PAPER_MS[name],
            "paper_ratio_to_sasrec": round(PAPER_MS[name] / PAPER_MS["sasrec"], 2),
            "paper_ratio_to_t50": round(PAPER_MS[name] / PAPER_MS["t2diff T=50"], 3),
            "repeats_cpu_seconds": [round(t, 4) for t in times[name]],
            "repeats_wall_seconds": [round(t, 4) for t in walls[name]],
        })
        print({k: v for k, v in rows[-1].items() if not k.startswith("repeats")})
    machine = torch.cuda.get_device_name() if gpu else f"{platform.machine()} {platform.processor()}".strip()
    meta = {"machine": machine, "device": args.device, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "history": MAX_LEN,
            "items": NUM_ITEMS, "repeats": args.repeats,
            "statistic": "median over repeats of " + ("synchronised wall time" if gpu else "process CPU time")
                         + " (ms_per_sample) and of wall time",
            "unet_channel_mult": args.unet_channel_mult,
            "paper": "Table 4 / Table 2 'Infer Time' (ms per sample on Tesla T4 GPUs; batch size not stated)"}
    out = Path(args.out)
    stem = "infer_cuda" if gpu else "infer"
    write_json(out / f"{stem}.json", {"meta": meta, "rows": rows}, prov)
    where = (f"on {machine}, synchronised wall time" if gpu else
             f"{args.threads} CPU thread(s), process CPU time; 'wall' is the elapsed time")
    md = ["# User-tower inference time (paper Table 4)", "",
          f"User-tower inference, ms per sample (batch {args.batch_size}, history {MAX_LEN}, {NUM_ITEMS} items, "
          f"{where}, median of {args.repeats} interleaved repeats; U-Net channel mult "
          f"{args.unet_channel_mult}). Paper: Tesla T4 GPUs.", "",
          "| model | params | ms/sample | wall ms | / SASRec | / T=50 | paper ms | paper / SASRec "
          "| paper / T=50 |",
          "|---" * 9 + "|"]
    md += [f"| {r['model']} | {r['params']:,} | {r['ms_per_sample']:.3f} | {r['wall_ms_per_sample']:.3f} | "
           f"{r['ratio_to_sasrec']:.2f} | "
           f"{r['ratio_to_t50']:.3f} | {r['paper_ms_per_sample']:.2f} | {r['paper_ratio_to_sasrec']:.2f} | "
           f"{r['paper_ratio_to_t50']:.3f} |" for r in rows]
    write_markdown(out / f"{stem}.md", "\n".join(md), prov)


if __name__ == "__main__":
    main()
