"""``t2diff export``: item embeddings with original ids + inner-product index (+ ANN recall report, + ONNX user
tower).

Write items.npy / item_ids.txt / items.parquet (original item ids), the FAISS inner-product index (index/) and
export.json (checkpoint path + sha256). For the ANN kinds (ivf, hnsw, ivfpq), index_report.json gives recall@K
against exact search, with real test users as queries. --onnx adds user_tower.onnx, checked against PyTorch on real
test users.
"""

from __future__ import annotations

import argparse

from t2diff.commands.common import command_parser, dump, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "export", "export item embeddings and an ANN index for serving", __doc__)
    p.add_argument("checkpoint", help="a run directory (its selected checkpoint) or a .pt file")
    p.add_argument("--out", required=True, help="export folder (created)")
    p.add_argument("--index", choices=["flat", "ivf", "hnsw", "ivfpq"], default="flat",
                   help="flat = exact (default; right for catalogues up to ~1e5 items); ivfpq = IVF with 4-bit "
                   "PQ fast-scan codes and exact re-ranking (large catalogues)")
    p.add_argument("--nlist", type=int, help="ivf/ivfpq: number of lists (default min(4*sqrt(N), N/39))")
    p.add_argument("--nprobe", type=int, default=64, help="ivf/ivfpq: lists scanned per query")
    p.add_argument("--pq-m", type=int, help="ivfpq: 4-bit sub-quantizers, must divide D (default D/2)")
    p.add_argument("--refine", type=int, default=8, help="ivfpq: exactly re-rank refine*k PQ candidates")
    p.add_argument("--fastscan", default="auto",
                   choices=["auto", "reservoir", "probe_parallel", "probe_parallel_reservoir"],
                   help="ivfpq search implementation: reservoir (one thread per query, cheaper for large refine*k); "
                   "probe_parallel* split one query's lists over the FAISS threads (serve --faiss-threads N)")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node")
    p.add_argument("--ef-construction", type=int, default=64, help="hnsw: build beam width")
    p.add_argument("--ef-search", type=int, default=128, help="hnsw: search beam width")
    p.add_argument("--report-k", type=int, default=100, help="K of the recall report (ANN kinds)")
    p.add_argument("--report-queries", type=int, default=1000, help="test users used as report queries")
    p.add_argument("--copy-checkpoint", action="store_true", help="copy the checkpoint into the export as model.pt")
    p.add_argument("--data", help="prepared dataset (default: the one in the checkpoint's config)")
    p.add_argument("--onnx", action="store_true",
                   help="also write user_tower.onnx (histories -> user vectors, for onnxruntime; needs the onnx and "
                   "onnxruntime packages); fails unless onnxruntime matches PyTorch on real test users")
    p.add_argument("--onnx-rows", type=int, default=64, help="--onnx: test histories in the equality check")
    p.add_argument("--onnx-atol", type=float, default=1e-5,
                   help="--onnx: largest accepted max abs difference between onnxruntime and PyTorch user vectors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2diff.data.errors import DataError
    from t2diff.retrieval.export import export_run
    from t2diff.retrieval.index import IndexConfig

    try:
        cfg = IndexConfig(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                          ef_construction=args.ef_construction, ef_search=args.ef_search, pq_m=args.pq_m,
                          refine=args.refine, fastscan=args.fastscan)
        meta = export_run(args.checkpoint, args.out, cfg, report_k=args.report_k,
                          report_queries=args.report_queries, copy_checkpoint=args.copy_checkpoint,
                          data_path=args.data, onnx=args.onnx, onnx_rows=args.onnx_rows, onnx_atol=args.onnx_atol)
    except (FileNotFoundError, ValueError, DataError) as e:
        return fail(str(e))
    print(dump({k: meta[k] for k in ("model", "num_items", "dim", "index", "report", "onnx")}))
    print(f"exported to {args.out}")
    return 0
