"""ANN benchmark for the matching stage: single-query latency and recall@K of inner-product indexes.

Builds N random-normal item vectors (seeded) and Q random-normal queries, computes the exact top-K by
brute force, then for flat, IVF (several nprobe), HNSW (several efSearch) and IVF-PQ fast scan with exact
re-ranking (several nprobe x refine) reports recall@K against it
and the p50/p99 latency of one-query-at-a-time search, as a server does it. Writes
``<out>/ann.json`` and ``<out>/ann.md`` (with the command, commit and machine: t2diff.provenance).

    nice -n 10 .venv/bin/python benchmarks/bench_ann.py            # 1M x 64, 1000 queries, K=100
    .venv/bin/python benchmarks/bench_ann.py --n 50000 --out /tmp/ann   # quick smoke run

Threads: index building and the batched exact search use ``--build-threads`` (all cores); latency is
measured with ``--search-threads`` (default 1) because a server runs one request per core, and an OpenMP
parallel region for a single query costs more than it saves, badly so when the cores are shared, except
for ``ivfpq`` with ``--pq-fastscan probe_parallel*`` (FAISS splits the query's probed lists over the threads).
Both wall time and the calling thread's CPU time per query are reported. With one search thread the target
is judged on CPU time, which equals the latency on an idle core and is not inflated by other processes on
shared machines; with more, on wall time (the calling thread's CPU time misses the other threads' work), so
run those on a quiet machine (the 1-minute load average is recorded with each row).

Random-normal vectors have no cluster structure: they are the hardest case for IVF (and harder than
trained embeddings for HNSW), so these numbers are a conservative floor for real catalogues.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from t2diff.provenance import provenance, write_json, write_markdown
from t2diff.retrieval.index import IndexConfig, ItemIndex, index_report

TARGET_P50_MS, TARGET_RECALL = 2.0, 0.95  # the serving target, at K = 100


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="number of items")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=("normal", "clustered"), default="normal",
                   help="normal: i.i.d. N(0, I) (the issue's setting, IVF's worst case); clustered: a Gaussian "
                        "mixture (--clusters centres N(0, I) plus N(0, noise^2 I))")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--noise", type=float, default=1.0, help="within-cluster sd for --data clustered")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: min(4*sqrt(N), N/39))")
    p.add_argument("--nprobe", type=_ints, default=_ints("32,128,512,1024,2048"))
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--ef-search", type=_ints, default=_ints("128,256,512,1024,2048"))
    p.add_argument("--pq-nlist", type=int, default=1024, help="ivfpq: IVF lists")
    p.add_argument("--pq-m", type=int, default=None, help="ivfpq: 4-bit sub-quantizers (default D/2)")
    p.add_argument("--pq-nprobe", type=_ints, default=_ints("128,256,384,512"))
    p.add_argument("--pq-fastscan", default="auto",
                   help="ivfpq: comma-separated search implementations to measure (IndexConfig.fastscan: auto, "
                   "reservoir, probe_parallel, probe_parallel_reservoir)")
    p.add_argument("--refine", type=_ints, default=_ints("8"), help="ivfpq: exact re-ranking of refine*K")
    p.add_argument("--kinds", default="flat,ivf,hnsw,ivfpq")
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--search-threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="ann", help="report file stem: <out>/<name>.json and .md")
    return p.parse_args(argv)


def _row(rep: dict[str, Any], build_s: float) -> dict[str, Any]:
    # One search thread: judged on CPU time per query (= latency on an idle core): wall time on these shared
    # 2-core machines includes waiting for other processes. More threads: on wall time. Both are reported.
    p50 = rep["cpu_ms"]["p50"] if rep["latency_ms"]["threads"] == 1 else rep["latency_ms"]["p50"]
    ok = p50 <= TARGET_P50_MS and rep["recall_at_k"] >= TARGET_RECALL
    return {**rep, "build_s": round(build_s, 1), "load_avg_1m": round(os.getloadavg()[0], 2), "meets_target": ok}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(a: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(a.seed)
    if a.data == "normal":
        return (rng.standard_normal((a.n, a.dim), dtype=np.float32),
                rng.standard_normal((a.queries, a.dim), dtype=np.float32))
    centres = rng.standard_normal((a.clusters, a.dim), dtype=np.float32)

    def draw(n: int) -> np.ndarray:
        x = centres[rng.integers(0, a.clusters, n)]
        x += a.noise * rng.standard_normal((n, a.dim), dtype=np.float32)
        return x

    return draw(a.n), draw(a.queries)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    prov = provenance(argv, __file__)  # before anything is written: the outputs are tracked files
    a = parse_args(argv)
    kinds = a.kinds.split(",")
    load_start = round(os.getloadavg()[0], 2)
    items, queries = make_data(a)  # [N, D], [Q, D]
    ids = np.arange(1, a.n + 1, dtype=np.int64)  # item ids 1..N (0 = padding, never indexed)
    faiss.omp_set_num_threads(a.build_threads)
    report_kw = dict(k=a.k, num_queries=None, latency_queries=a.queries, threads=a.search_threads)

    t0 = time.perf_counter()
    flat = ItemIndex.build(items, ids, IndexConfig("flat"))
    exact_ids = flat.search(queries, a.k)[1]  # [Q, K] batched brute force: the reference
    _log(f"exact top-{a.k} for {a.queries} queries over {a.n} x {a.dim}: {time.perf_counter() - t0:.1f}s")
    rows: list[dict[str, Any]] = []
    if a.search_threads != 1:
        _log("note: more than one search thread: the target is judged on wall time; run on a quiet machine")
    if "flat" in kinds:
        rows.append(_row(index_report(flat, queries, exact_ids=exact_ids, **report_kw), 0.0))
        _log(f"flat: {rows[-1]['latency_ms']}")
    del flat

    if "ivf" in kinds:
        t0 = time.perf_counter()
        ivf = ItemIndex.build(items, ids, IndexConfig("ivf", nlist=a.nlist, seed=a.seed))
        build_s = time.perf_counter() - t0
        _log(f"ivf nlist={ivf.cfg.nlist} built in {build_s:.1f}s")
        for nprobe in a.nprobe:
            ivf.set_search_params(nprobe=nprobe)
            rows.append(_row(index_report(ivf, queries, exact_ids=exact_ids, **report_kw), build_s))
            _log(f"ivf nprobe={nprobe}: recall={rows[-1]['recall_at_k']:.4f} {rows[-1]['latency_ms']}")
        del ivf

    if "hnsw" in kinds:
        t0 = time.perf_counter()
        cfg = IndexConfig("hnsw", hnsw_m=a.hnsw_m, ef_construction=a.ef_construction)
        hnsw = ItemIndex.build(items, ids, cfg)
        build_s = time.perf_counter() - t0
        _log(f"hnsw M={a.hnsw_m} efConstruction={a.ef_construction} built in {build_s:.1f}s")
        for ef in a.ef_search:
            hnsw.set_search_params(ef_search=ef)
            rows.append(_row(index_report(hnsw, queries, exact_ids=exact_ids, **report_kw), build_s))
            _log(f"hnsw efSearch={ef}: recall={rows[-1]['recall_at_k']:.4f} {rows[-1]['latency_ms']}")
        del hnsw

    if "ivfpq" in kinds:
        t0 = time.perf_counter()
        pq = ItemIndex.build(items, ids, IndexConfig("ivfpq", nlist=a.pq_nlist, pq_m=a.pq_m, seed=a.seed))
        build_s = time.perf_counter() - t0
        _log(f"ivfpq nlist={pq.cfg.nlist} pq_m={pq.cfg.pq_m} built in {build_s:.1f}s")
        for nprobe in a.pq_nprobe:
            for refine in a.refine:
                for impl in a.pq_fastscan.split(","):
                    pq.set_search_params(nprobe=nprobe, refine=refine, fastscan=impl)
                    rows.append(_row(index_report(pq, queries, exact_ids=exact_ids, **report_kw), build_s))
                    _log(f"ivfpq nprobe={nprobe} refine={refine} {impl}: recall={rows[-1]['recall_at_k']:.4f} "
                         f"{rows[-1]['latency_ms']}")
        del pq

    meeting = [r for r in rows if r["meets_target"]]
    result = {
        "benchmark": "ann",
        "setup": {
            "items": a.n, "dim": a.dim, "queries": a.queries, "k": a.k, "seed": a.seed,
            "data": ("standard normal" if a.data == "normal" else
                     f"Gaussian-mixture ({a.clusters} clusters, noise sd {a.noise})") + " items and queries (float32)",
            "build_threads": a.build_threads, "search_threads": a.search_threads,
            "latency": "one query per search() call through ItemIndex (Python overhead included), after 100 "
                       "untimed warm-up queries; "
                       "cpu = the calling thread's CPU time, wall = elapsed time",
            "load_avg_1m_at_start": load_start, "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            "faiss": faiss.__version__,
        },
        "target": {"p50_ms": TARGET_P50_MS, f"recall@{a.k}": TARGET_RECALL, "met_by": [
            {"kind": r["kind"], **r["params"]} for r in meeting]},
        "results": rows,
    }
    write_json(a.out / f"{a.name}.json", result, prov)
    write_markdown(a.out / f"{a.name}.md", to_markdown(result), prov)
    print(to_markdown(result))
    return {"provenance": prov, **result}


def to_markdown(res: dict[str, Any]) -> str:
    s, k = res["setup"], res["setup"]["k"]
    lines = [
        "# ANN benchmark (inner product, single-query latency)",
        "",
        f"{s['items']:,} x {s['dim']} {s['data']}; {s['queries']} queries; "
        f"faiss {s['faiss']}, build threads {s['build_threads']}, "
        f"search threads {s['search_threads']}. Latency: {s['latency']}. Recall@{k} against exact flat search.",
        "",
        f"| index | params | recall@{k} | cpu p50 ms | cpu p99 ms | wall p50 ms | wall p99 ms | build s "
        f"| load avg | {'cpu' if s['search_threads'] == 1 else 'wall'} p50 <= {TARGET_P50_MS} ms and "
        f"recall >= {TARGET_RECALL} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        lat, cpu = r["latency_ms"], r["cpu_ms"]
        params = ", ".join(f"{key}={v}" for key, v in r["params"].items()) or "-"
        lines.append(f"| {r['kind']} | {params} | {r['recall_at_k']:.4f} | {cpu['p50']:.3f} | {cpu['p99']:.3f} "
                     f"| {lat['p50']:.3f} | {lat['p99']:.3f} | {r['build_s']} | {r['load_avg_1m']} "
                     f"| {'yes' if r['meets_target'] else 'no'} |")
    met = res["target"]["met_by"]
    lines += ["", "Target met by: " + (", ".join(json.dumps(m) for m in met) if met else "none of these settings.")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
