"""``t2diff serve``: the HTTP matching service (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from t2diff.commands.common import add_runtime_args, fail
from t2diff.retrieval.limits import ServiceLimits


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service: POST /recommend, GET /health, docs at /docs",
                       description="Load the checkpoint (weights only) and the export's index, then serve "
                       "POST /recommend {history, timestamps?, k, exclude_seen} -> top-k items with scores.")
    p.add_argument("checkpoint", help="a run directory (best.pt, else last.pt), a .pt file, or an export folder")
    p.add_argument("--export", help="export folder from `t2diff export` (default: exact flat index in memory)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data", help="prepared dataset (default: the one in the checkpoint's config)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--threads", type=int, help="requests computed at once (default: the number of CPUs, >= 2); "
                   "each runs PyTorch and FAISS on one thread")
    p.add_argument("--faiss-threads", type=int, default=1,
                   help="FAISS threads per search (default 1: one core per request); more only helps an index "
                   "exported with --fastscan probe_parallel*, on cores that concurrent requests leave idle")
    p.add_argument("--max-batch", type=int, default=64,
                   help="micro-batching: concurrent requests share one user-tower batch of at most this many "
                   "(default 64; 1 = each request computed alone, --threads at once)")
    p.add_argument("--max-wait-ms", type=float, default=1.0,
                   help="micro-batching: how long a batch that is not full waits for more requests (default 1)")
    p.add_argument("--batch-workers", type=int, default=1, help="micro-batching: batches computed at once")
    p.add_argument("--max-body-bytes", type=int, default=ServiceLimits.max_body_bytes,
                   help="larger request bodies get a 413 before they are parsed (default %(default)s)")
    p.add_argument("--request-timeout", type=float, default=ServiceLimits.request_timeout_s,
                   help="seconds to read and answer a request; slower ones get a 408 (body) or 503 (answer)")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2diff.data.errors import DataError
    from t2diff.retrieval.batching import BatchingConfig
    from t2diff.retrieval.export import open_retriever
    from t2diff.retrieval.service import serve

    if args.faiss_threads < 1:
        return fail(f"--faiss-threads must be >= 1, got {args.faiss_threads}")
    try:
        limits = ServiceLimits(args.max_body_bytes, args.request_timeout)
        batching = BatchingConfig(args.max_batch, args.max_wait_ms, args.batch_workers)
    except ValueError as e:
        return fail(str(e))
    try:
        retriever = open_retriever(args.checkpoint, args.export, args.data, runtime=args.runtime,
                                   onnx_threads=args.onnx_threads)
    except (FileNotFoundError, ValueError, DataError) as e:
        return fail(str(e))
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            print(f"warning: binding {args.host}: the service has no authentication", file=sys.stderr)
    except ValueError:
        pass  # a host name; uvicorn resolves it
    serve(retriever, args.host, args.port, args.log_level, args.access_log, args.threads, args.faiss_threads,
          limits, batching)
    return 0
