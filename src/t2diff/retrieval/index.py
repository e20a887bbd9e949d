"""Inner-product ANN index over item embeddings (the matching stage's item side).

Scores are dot products ``e_u . e_i`` (DESIGN §1), so every index here is built with
``faiss.METRIC_INNER_PRODUCT``: an L2 index would rank by ``-||e_u - e_i||^2``, which rewards items with a
small norm and is a different ranking. The padding item (id 0) is never indexed, so it can never be
returned; FAISS works with row positions and this module maps them back to item ids.

Kinds (see the FAISS wiki "Guidelines to choose an index"):
- ``flat``: exact brute force; the reference, and the right choice for small catalogues.
- ``ivf``: IndexIVFFlat, spherical k-means coarse quantizer, ``nprobe`` lists scanned per query.
- ``hnsw``: IndexHNSWFlat graph, ``ef_search`` candidates per query; no training.
- ``ivfpq``: IVF whose lists hold 4-bit product-quantizer codes scanned with SIMD ("fast scan",
  IndexIVFPQFastScan), then exact re-ranking of the ``refine * k`` best candidates with the stored float
  vectors (IndexRefineFlat). Scanning a code costs a fraction of a float dot product, so many more lists can
  be probed per millisecond: the choice for large catalogues whose vectors have little cluster structure.

Use :func:`index_report` to measure an ANN index's recall@K against exact search before serving it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

try:
    import faiss
except ImportError as e:  # pragma: no cover - exercised only without the serve extra
    raise ImportError("t2diff.retrieval.index needs faiss: pip install 't2diff[serve]' (faiss-cpu)") from e

PAD_ID = 0  # the padding item id; never indexed, never returned
MISSING_ID = -1  # id returned (score -inf) where fewer than k results exist
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
# ivfpq search implementations (FAISS IndexIVFFastScan.implem): auto = FAISS's choice; reservoir = one thread per
# query collecting candidates in a reservoir instead of a heap (cheaper when refine * k is large);
# probe_parallel(_reservoir) = one query's probed lists split over the FAISS threads (heap / reservoir)
FASTSCAN_IMPLS = {"auto": 0, "reservoir": 11, "probe_parallel": 14, "probe_parallel_reservoir": 15}
FORMAT_VERSION = 1
_INDEX_FILE, _IDS_FILE, _META_FILE = "index.faiss", "ids.npy", "index.json"


@dataclass
class IndexConfig:
    """How to build and search the index. Unused fields of other kinds are ignored."""

    kind: str = "flat"  # "flat" | "ivf" | "hnsw" | "ivfpq"
    # ivf, ivfpq
    nlist: int | None = None  # number of k-means lists; None -> min(4*sqrt(N), N/39) (FAISS guidance)
    nprobe: int = 64  # lists scanned per query (recall/latency knob; tune with index_report)
    train_size: int | None = None  # k-means training sample; None -> min(N, 64*nlist)
    seed: int = 0  # training-sample and k-means seed
    # hnsw
    hnsw_m: int = 32  # graph links per node (4..64); memory (4*D + 8*M) bytes per item
    ef_construction: int = 64  # build-time beam width (build cost vs graph quality)
    ef_search: int = 128  # search-time beam width (recall/latency knob); FAISS uses max(ef_search, k)
    # ivfpq
    pq_m: int | None = None  # sub-quantizers (4 bits each; must divide D); None -> D / 2 (2 dims per code)
    refine: int = 8  # exact re-ranking of refine * k candidates (1: PQ scores as they are)
    # ivfpq search implementation (FASTSCAN_IMPLS); probe_parallel* lower single-query latency only when more
    # than one FAISS thread is free for the query
    fastscan: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"IndexConfig.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("nlist", "nprobe", "train_size", "seed", "hnsw_m", "ef_construction", "ef_search", "pq_m",
                     "refine"):
            v = getattr(self, name)
            if v is None and name in ("nlist", "train_size", "pq_m"):
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "seed" else 1):
                raise ValueError(f"IndexConfig.{name} must be an integer >= {0 if name == 'seed' else 1}, "
                                 f"got {v!r}")
        if self.fastscan not in FASTSCAN_IMPLS:
            raise ValueError(f"IndexConfig.fastscan must be one of {sorted(FASTSCAN_IMPLS)}, got {self.fastscan!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown IndexConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_f32_2d(x: Any, what: str) -> np.ndarray:
    """numpy or torch -> C-contiguous float32 [n, D]; rejects NaN / inf (FAISS would silently rank them)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().float().numpy()
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D [n, D], got shape {a.shape}")
    if a.shape[1] < 1:
        raise ValueError(f"{what} has dimension 0")
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
        raise ValueError(f"{what} contains NaN or inf in {bad.size} row(s), first rows {bad[:5].tolist()}")
    return a


class ItemIndex:
    """An inner-product FAISS index plus the item id of each indexed row. Build with :meth:`build`."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, cfg: IndexConfig) -> None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("ItemIndex needs an inner-product FAISS index (scores are dot products)")
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.index = index
        self.ids = ids  # [N] int64, ids[pos] = item id of FAISS row pos
        self.cfg = cfg
        self._apply_search_params()

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def build(cls, item_vecs: Any, ids: Any = None, cfg: IndexConfig | None = None) -> ItemIndex:
        """Index ``item_vecs`` [N, D] (numpy or torch).

        ``ids=None``: ``item_vecs`` is a model's table ``item_embeddings()`` [I+1, D] whose row i is item i;
        row 0 (padding) is dropped. Otherwise ``ids`` [N] gives each row's item id (unique, >= 0); rows with
        id 0 (padding) are dropped.
        """
        cfg = replace(cfg) if cfg is not None else IndexConfig()  # a copy: build records resolved nlist
        vecs = _as_f32_2d(item_vecs, "item_vecs")
        if ids is None:
            ids_a = np.arange(vecs.shape[0], dtype=np.int64)
        else:
            ids_a = np.asarray(ids.detach().cpu() if hasattr(ids, "detach") else ids).astype(np.int64)
            if ids_a.shape != (vecs.shape[0],):
                raise ValueError(f"ids must have shape [{vecs.shape[0]}], got {ids_a.shape}")
            if (ids_a < 0).any():
                raise ValueError("ids must be >= 0 (-1 marks a missing result)")
            if np.unique(ids_a).size != ids_a.size:
                raise ValueError("ids must be unique")
        keep = ids_a != PAD_ID
        vecs, ids_a = np.ascontiguousarray(vecs[keep]), ids_a[keep]
        n, d = vecs.shape
        if n == 0:
            raise ValueError("no items to index (only the padding row)")

        if cfg.kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(d)
        elif cfg.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
        else:
            index = cls._train_ivf(vecs, cfg)
            if cfg.kind == "ivfpq":  # keep the float vectors for exact re-ranking of the PQ candidates
                index = faiss.IndexRefineFlat(index)
        index.add(vecs)
        return cls(index, ids_a, cfg)

    @staticmethod
    def _train_ivf(vecs: np.ndarray, cfg: IndexConfig) -> faiss.Index:
        n, d = vecs.shape
        if cfg.nlist is None:
            # FAISS guidance: 4*sqrt(N)..16*sqrt(N) lists, and >= 39 training points per centroid
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        elif cfg.nlist > n:
            raise ValueError(f"IndexConfig.nlist={cfg.nlist} exceeds the number of items {n}")
        else:
            nlist = cfg.nlist
        train_n = min(n, cfg.train_size if cfg.train_size is not None else 64 * nlist)
        if train_n < nlist:
            raise ValueError(f"IndexConfig.train_size={train_n} is smaller than nlist={nlist}")
        # The quantizer must use inner product too; FAISS then trains spherical k-means for IP.
        if cfg.kind == "ivfpq":
            m = cfg.pq_m if cfg.pq_m is not None else max(1, d // 2)
            if d % m:
                raise ValueError(f"IndexConfig.pq_m={m} must divide the embedding dimension {d}")
            index = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(d), d, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
            cfg.pq_m = m
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
        index.cp.max_points_per_centroid = max(256, -(-train_n // nlist))  # don't re-subsample our sample
        rng = np.random.default_rng(cfg.seed)
        sample = vecs if train_n == n else vecs[np.sort(rng.choice(n, size=train_n, replace=False))]
        index.train(sample)
        cfg.nlist = nlist  # record the resolved value so save/load and reports show it
        return index

    # ---- search -------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return self.cfg.kind

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None,
                          refine: int | None = None, fastscan: str | None = None) -> None:
        """Change the recall/latency knobs in place (not thread-safe against concurrent searches)."""
        self.cfg = replace(
            self.cfg,
            nprobe=self.cfg.nprobe if nprobe is None else nprobe,
            ef_search=self.cfg.ef_search if ef_search is None else ef_search,
            refine=self.cfg.refine if refine is None else refine,
            fastscan=self.cfg.fastscan if fastscan is None else fastscan,
        )  # replace() re-validates
        self._apply_search_params()

    def _ivf(self) -> Any:
        """The IVF part (for ivfpq: the index under the exact re-ranking layer)."""
        if self.cfg.kind == "ivfpq":
            return faiss.downcast_index(self.index.base_index)
        return faiss.extract_index_ivf(self.index)

    def _apply_search_params(self) -> None:
        if self.cfg.kind in ("ivf", "ivfpq"):
            ivf = self._ivf()
            ivf.nprobe = min(self.cfg.nprobe, ivf.nlist)
            if self.cfg.kind == "ivfpq":
                self.index.k_factor = float(self.cfg.refine)
                ivf.implem = FASTSCAN_IMPLS[self.cfg.fastscan]
        elif self.cfg.kind == "hnsw":
            self.index.hnsw.efSearch = self.cfg.ef_search

    def search(
        self, queries: Any, k: int, exclude: Sequence[Collection[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product for each query.

        queries: [Q, D] (or [D] for one query), numpy or torch. exclude: optional, one collection of item
        ids per query (e.g. the user's seen items) that must not be returned.
        Returns (scores [Q, k] float32, descending, equal scores by ascending id, with the exact index also
        across the k-th place; ids [Q, k] int64). Where fewer than k items qualify
        (an IVF probe that reached too few items, or exclusions leaving < k), the tail is id -1, score -inf.
        """
        q = _as_f32_2d(queries[None] if np.ndim(queries) == 1 else queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index has {self.dim}")
        k = int(k)
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be in [1, {self.size}] (the number of indexed items), got {k}")
        if exclude is not None and len(exclude) != q.shape[0]:
            raise ValueError(f"exclude has {len(exclude)} entries for {q.shape[0]} queries")

        # Ask for enough extra results that k survive the exclusion filter.
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        k_search = min(self.size, k + extra)
        scores, ids = self._search_ordered(q, k_search)  # [Q, k_search] each
        if exclude is None:
            return scores[:, :k], ids[:, :k]

        out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        out_i = np.full((q.shape[0], k), MISSING_ID, dtype=np.int64)
        for r, seen in enumerate(exclude):
            ok = ids[r] != MISSING_ID
            if len(seen):
                ok &= ~np.isin(ids[r], np.fromiter(seen, dtype=np.int64, count=len(seen)))
            keep = np.flatnonzero(ok)[:k]
            out_s[r, : keep.size], out_i[r, : keep.size] = scores[r, keep], ids[r, keep]
        return out_s, out_i

    def _search_ordered(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k with ties in a fixed order: equal scores by ascending item id, and where several items tie at
        the k-th place, the lowest ids among them (one more result is fetched to see whether a tie crosses the
        cut, and the search widened until it does not). So every caller (retrieve, serve, any k) sees ties the
        same way, whatever order the index found them in. Missing slots (id -1, score -inf) come last.
        The widening applies to the exact index only: an ANN index's candidate set is approximate anyway, and
        asking it for k + 1 would change which candidates it re-ranks."""
        exact = self.kind == "flat"
        n = min(self.size, k + 1) if exact else k
        while True:
            scores, pos = self.index.search(q, n)  # [Q, n] each
            ids = np.where(pos >= 0, self.ids[np.maximum(pos, 0)], MISSING_ID)
            scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
            if not exact or n >= self.size or not (
                    np.isfinite(scores[:, -1]) & (scores[:, -1] == scores[:, k - 1])).any():
                break
            n = min(self.size, 2 * n)  # a tie reaches past the cut: look further
        order = np.lexsort((np.where(ids == MISSING_ID, np.iinfo(np.int64).max, ids), -scores), axis=1)
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        return scores[:, :k], ids[:, :k]

    def reconstruct(self) -> np.ndarray:
        """The indexed vectors [N, D] float32, row i belonging to ``ids[i]``."""
        if self.cfg.kind == "ivfpq":  # the exact vectors live in the re-ranking layer, in row order
            return faiss.downcast_index(self.index.refine_index).reconstruct_n(0, self.size)
        if self.cfg.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()  # IVF stores rows by list, not position
        return self.index.reconstruct_n(0, self.size)

    def exact_search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact brute-force top-k over the same vectors and ids (the reference for recall)."""
        if self.cfg.kind == "flat":
            return self.search(queries, k)
        return ItemIndex.build(self.reconstruct(), self.ids, IndexConfig(kind="flat")).search(queries, k)

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss``, ``ids.npy`` and ``index.json`` (config, dim, size) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / _INDEX_FILE))
        np.save(folder / _IDS_FILE, self.ids)
        meta = {
            "format_version": FORMAT_VERSION,
            "metric": "inner_product",
            "dim": self.dim,
            "size": self.size,
            "faiss_version": faiss.__version__,
            "config": self.cfg.to_dict(),
        }
        (folder / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ItemIndex:
        folder = Path(folder)
        missing = [f for f in (_INDEX_FILE, _IDS_FILE, _META_FILE) if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a saved index: missing {missing}")
        meta = json.loads((folder / _META_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder / _META_FILE}: unsupported format_version "
                             f"{meta.get('format_version')}")
        cfg = IndexConfig.from_dict(meta["config"])
        index = faiss.read_index(str(folder / _INDEX_FILE))
        ids = np.load(folder / _IDS_FILE).astype(np.int64, copy=False)
        if index.d != meta["dim"] or index.ntotal != meta["size"]:
            raise ValueError(f"{folder}: index file does not match {_META_FILE} (dim/size)")
        return cls(index, ids, cfg)


def build_index(item_vecs: Any, ids: Any = None, cfg: IndexConfig | None = None) -> ItemIndex:
    """Shorthand for :meth:`ItemIndex.build`."""
    return ItemIndex.build(item_vecs, ids, cfg)


def load_index(folder: str | Path) -> ItemIndex:
    """Shorthand for :meth:`ItemIndex.load`."""
    return ItemIndex.load(folder)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx[:k] ∩ exact[:k]| / k. Both [Q, >= k]; ids -1 (missing) never count."""
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    if a.ndim != 2 or e.ndim != 2 or a.shape[0] != e.shape[0]:
        raise ValueError(f"approx_ids and exact_ids must be [Q, >=k] with equal Q, got {a.shape}, {e.shape}")
    if k < 1 or a.shape[1] < k or e.shape[1] < k:
        raise ValueError(f"k={k} must be >= 1 and <= the number of columns ({a.shape[1]}, {e.shape[1]})")
    if a.shape[0] == 0:
        raise ValueError("no queries")
    hits = [np.isin(ar[:k][ar[:k] != MISSING_ID], er[:k]).sum() for ar, er in zip(a, e, strict=True)]
    return float(np.mean(hits) / k)


def index_report(
    index: ItemIndex,
    queries: Any,
    k: int = 100,
    *,
    exact_ids: np.ndarray | None = None,
    num_queries: int | None = 1000,
    latency_queries: int = 200,
    threads: int | None = 1,
    seed: int = 0,
    warmup_queries: int = 100,
) -> dict[str, Any]:
    """Recall@k of ``index`` against exact inner-product search, and single-query latency.

    queries: [Q, D] user embeddings (numpy or torch); a random sample of ``num_queries`` is used (None: all).
    exact_ids: precomputed exact top-k ids for the sampled queries (else computed by brute force).
    Latency is measured one query at a time, as a server does, after ``warmup_queries`` untimed ones, with
    ``threads`` FAISS threads (None: leave the current setting). ``latency_ms`` is wall time; ``cpu_ms`` is
    the calling thread's CPU time, which with ``threads=1`` equals the latency on an idle core and is not
    inflated when other processes share the machine (it does not count work on other threads, so it means
    nothing for ``threads > 1``).
    """
    q = _as_f32_2d(queries, "queries")
    if num_queries is not None and q.shape[0] > num_queries:
        q = q[np.sort(np.random.default_rng(seed).choice(q.shape[0], size=num_queries, replace=False))]
    if exact_ids is None:
        exact_ids = index.exact_search(q, k)[1]
    elif exact_ids.shape[0] != q.shape[0]:
        raise ValueError(f"exact_ids has {exact_ids.shape[0]} rows for {q.shape[0]} queries")
    recall = recall_at_k(index.search(q, k)[1], exact_ids, k)

    prev_threads = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        # untimed single-query searches first: a server is warm, and the batched recall search above takes
        # another code path (measured on 1M items: without this a sweep's first setting read ~15 % slower)
        for row in q[: max(0, warmup_queries)]:
            index.search(row[None], k)
        wall, cpu = [], []
        for row in q[: max(1, latency_queries)]:
            t0, c0 = time.perf_counter(), time.thread_time()
            index.search(row[None], k)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    finally:
        faiss.omp_set_num_threads(prev_threads)
    lat_ms, cpu_ms = np.asarray(wall) * 1e3, np.asarray(cpu) * 1e3
    params = {"flat": {}, "ivf": {"nlist": index.cfg.nlist, "nprobe": index.cfg.nprobe},
              "ivfpq": {"nlist": index.cfg.nlist, "nprobe": index.cfg.nprobe, "pq_m": index.cfg.pq_m,
                        "refine": index.cfg.refine, "fastscan": index.cfg.fastscan},
              "hnsw": {"M": index.cfg.hnsw_m, "ef_construction": index.cfg.ef_construction,
                       "ef_search": index.cfg.ef_search}}[index.kind]
    return {
        "kind": index.kind,
        "params": params,
        "size": index.size,
        "dim": index.dim,
        "k": k,
        "num_queries": int(q.shape[0]),
        "recall_at_k": recall,
        "latency_ms": {
            "p50": float(np.percentile(lat_ms, 50)),
            "p99": float(np.percentile(lat_ms, 99)),
            "mean": float(lat_ms.mean()),
            "num_queries": int(lat_ms.size),
            "threads": threads if threads is not None else prev_threads,
        },
        "cpu_ms": {"p50": float(np.percentile(cpu_ms, 50)), "p99": float(np.percentile(cpu_ms, 99)),
                   "mean": float(cpu_ms.mean())},
    }
