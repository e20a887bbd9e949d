"""How much of a catalogue an IVF index must scan to find the true top-K by inner product (no quantisation).

For N items and Q queries (random normal by default, as in ``bench_ann.py``), trains k-means with FAISS for each
nlist, assigns every item to its nearest list (one list, or its two nearest with ``spill 2``, each copy
scanned), orders the lists by inner product with the query as ``IndexIVF`` probes them, and reports the
*partition recall*: the share of the exact top-K whose list is among those probed before a given share of the
stored codes has been scanned. It bounds any IVF index from above (IVF-flat reaches it; IVF-PQ loses more),
and a scan's cost is proportional to the codes it reads, so it says which scan budget a recall target needs.

    .venv/bin/python benchmarks/ann_partition_recall.py                       # 1M x 64, nlist 256..4096
    .venv/bin/python benchmarks/ann_partition_recall.py --n 50000 --nlist 64,256 --out /tmp/part   # smoke run

Writes ``<out>/<name>.json`` and ``.md`` (with the command, commit and machine: t2diff.provenance).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from t2diff.provenance import provenance, write_json, write_markdown


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nlist", type=_ints, default=_ints("256,1024,2048,4096"))
    p.add_argument("--fractions", type=_floats, default=_floats("0.2,0.3,0.4,0.45,0.5"),
                   help="shares of the stored codes scanned")
    p.add_argument("--train-per-list", type=int, default=64, help="k-means sample = this x nlist (as ItemIndex)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="ann_partition")
    return p.parse_args(argv)


def partition_recall(items: np.ndarray, queries: np.ndarray, exact: np.ndarray, centroids: np.ndarray,
                     fractions: list[float], spill: int) -> list[dict[str, float]]:
    """Partition recall at each scanned share. items [N, D], queries [Q, D], exact [Q, K] row numbers of the
    true top-K, centroids [nlist, D] (unit norm: FAISS trains spherical k-means for inner product)."""
    n, nlist = items.shape[0], centroids.shape[0]
    cq = faiss.IndexFlatIP(centroids.shape[1])
    cq.add(centroids)
    _, assign = cq.search(items, spill)  # [N, spill] lists holding each item
    sizes = np.bincount(assign.ravel(), minlength=nlist)  # codes stored per list
    _, order = cq.search(queries, nlist)  # [Q, nlist] lists in probe order
    rows = np.arange(queries.shape[0])[:, None]
    probe_rank = np.empty_like(order)
    probe_rank[rows, order] = np.arange(nlist)[None, :]  # [Q, nlist] position of each list in the probe order
    scanned = np.cumsum(sizes[order], axis=1)  # [Q, nlist] codes read after probing 1..nlist lists
    out = []
    for frac in fractions:
        nprobe = (scanned < frac * n).sum(1) + 1  # [Q] lists probed until frac * N codes are read
        found = np.zeros(exact.shape, dtype=bool)
        for s in range(spill):
            found |= probe_rank[rows, assign[exact, s]] < nprobe[:, None]
        out.append({"fraction": frac, "nprobe_median": int(np.median(nprobe)), "recall": float(found.mean())})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    prov = provenance(argv, __file__)  # before anything is written: the outputs are tracked files
    a = parse_args(argv)
    rng = np.random.default_rng(a.seed)
    items = rng.standard_normal((a.n, a.dim), dtype=np.float32)
    queries = rng.standard_normal((a.queries, a.dim), dtype=np.float32)
    flat = faiss.IndexFlatIP(a.dim)
    flat.add(items)
    exact = flat.search(queries, a.k)[1]  # [Q, K]
    rows = []
    for nlist in a.nlist:
        t0 = time.perf_counter()
        km = faiss.Kmeans(a.dim, nlist, niter=20, seed=a.seed, spherical=True)
        km.train(items[rng.choice(a.n, min(a.n, a.train_per_list * nlist), replace=False)])
        for spill in (1, 2):
            for r in partition_recall(items, queries, exact, km.centroids, a.fractions, spill):
                rows.append({"nlist": nlist, "spill": spill, **r})
        print(f"nlist={nlist}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    res = {"benchmark": "ann_partition",
           "setup": {"items": a.n, "dim": a.dim, "queries": a.queries, "k": a.k, "seed": a.seed,
                     "data": "standard normal", "faiss": faiss.__version__},
           "results": rows}
    write_json(a.out / f"{a.name}.json", res, prov)
    md = to_markdown(res, a.fractions)
    write_markdown(a.out / f"{a.name}.md", md, prov)
    print(md)
    return {"provenance": prov, **res}


def to_markdown(res: dict[str, Any], fractions: list[float]) -> str:
    s, k = res["setup"], res["setup"]["k"]
    lines = ["# IVF partition recall (inner product): share of the true top-K in the probed lists", "",
             f"{s['items']:,} x {s['dim']} {s['data']} items, {s['queries']} "
             f"queries, K = {k}, faiss {s['faiss']}. Spherical k-means (as FAISS trains IVF for inner product); "
             "lists probed in order of inner product with the query until the share of stored codes is read. "
             "spill 2: each item stored in its two nearest lists (both copies count as read). "
             "Cell: recall@K (median nprobe).", "",
             "| nlist | spill | " + " | ".join(f"{f:.0%} scanned" for f in fractions) + " |",
             "|---|---|" + "---|" * len(fractions)]
    keyed = {(r["nlist"], r["spill"], r["fraction"]): r for r in res["results"]}
    for nlist, spill in dict.fromkeys((r["nlist"], r["spill"]) for r in res["results"]):
        cells = [f"{keyed[(nlist, spill, f)]['recall']:.3f} ({keyed[(nlist, spill, f)]['nprobe_median']})"
                 for f in fractions]
        lines.append(f"| {nlist} | {spill} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
