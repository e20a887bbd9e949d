"""The inner-product item index: exactness, ANN recall, persistence, exclusions, padding, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from t2diff.retrieval.index import (  # noqa: E402
    FASTSCAN_IMPLS,
    MISSING_ID,
    IndexConfig,
    ItemIndex,
    build_index,
    index_report,
    load_index,
    recall_at_k,
)

N_ITEMS, DIM, N_QUERIES = 20_000, 32, 300
# Recall@10 floors on 20k x 32 random-normal items (seeded), measured 2025 with faiss 1.15.1:
# HNSW with defaults (M=32, ef_construction=64, ef_search=128): 0.998.
HNSW_DEFAULT_RECALL10 = 0.95
# IVF with the auto nlist (512) and nprobe=128: 0.93. Unstructured Gaussian data is IVF's worst case (no
# clusters to exploit), so it must scan ~1/4 of the lists; with the default nprobe=64 it measures 0.80.
IVF_NPROBE128_RECALL10 = 0.90
# IVF with all defaults on clustered data (200 Gaussian clusters), the shape real embeddings have: 1.0.
IVF_DEFAULT_CLUSTERED_RECALL10 = 0.95
# IVF-PQ fast scan (nlist 512, 16 x 4-bit codes) with nprobe=128 and exact re-ranking of 8k candidates; floor
# refine=8 measured 0.85 (PQ alone, refine=1: 0.44; IVF-flat at the same nprobe 0.92).
IVFPQ_NPROBE128_RECALL10 = 0.80


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((N_ITEMS + 1, DIM), dtype=np.float32)  # [I+1, D], row 0 = padding
    table[0] = 100.0  # a padding row that would win every query if it were indexed
    queries = rng.standard_normal((N_QUERIES, DIM), dtype=np.float32)
    return table, queries


@pytest.fixture(scope="module")
def exact_top10(data: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    table, queries = data
    return ItemIndex.build(table).search(queries, 10)[1]


def brute_force(table: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ table[1:].astype(np.float64).T  # [Q, I], padding excluded
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), top + 1  # ids = column + 1


def test_flat_equals_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    table, queries = data
    k = 50
    scores, ids = ItemIndex.build(table).search(queries, k)
    ref_scores, ref_ids = brute_force(table, queries, k)
    assert scores.shape == ids.shape == (len(queries), k) and ids.dtype == np.int64
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)
    for r in range(len(queries)):
        diff = np.flatnonzero(ids[r] != ref_ids[r])
        # ids may differ only where two items tie (to float32 precision) in score
        assert np.allclose(ref_scores[r, diff], scores[r, diff], atol=1e-4), r
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # descending


def test_padding_never_returned(data: tuple[np.ndarray, np.ndarray]) -> None:
    table, queries = data
    for cfg in (IndexConfig("flat"), IndexConfig("ivf", nlist=16), IndexConfig("hnsw", hnsw_m=8),
                IndexConfig("ivfpq", nlist=8, nprobe=8)):
        index = ItemIndex.build(table[:500], cfg=cfg)
        assert index.size == 499
        ids = index.search(queries, 499)[1]
        assert (ids != 0).all(), cfg.kind
    # explicit ids: a row whose id is 0 is padding and is dropped too
    index = build_index(table[:10], ids=np.arange(10)[::-1].copy())
    assert index.size == 9 and 0 not in index.ids


def test_explicit_ids_are_mapped(data: tuple[np.ndarray, np.ndarray]) -> None:
    table, queries = data
    vecs = table[1:1001]
    ids = np.arange(1000) * 7 + 1000  # arbitrary original ids
    got = build_index(vecs, ids=ids).search(queries, 5)[1]
    ref = brute_force(table[:1001], queries, 5)[1]  # ids 1..1000 -> rows 0..999 of vecs
    assert recall_at_k(got, ids[ref - 1], 5) == 1.0


def test_torch_input(data: tuple[np.ndarray, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    table, queries = data
    index = ItemIndex.build(torch.from_numpy(table[:200]))
    s1, i1 = index.search(torch.from_numpy(queries[:3]), 4)
    s2, i2 = index.search(queries[:3], 4)
    np.testing.assert_array_equal(i1, i2)
    # a single query as a 1-D vector
    np.testing.assert_array_equal(index.search(queries[0], 4)[1], i2[:1])


def test_hnsw_default_recall(data: tuple[np.ndarray, np.ndarray], exact_top10: np.ndarray) -> None:
    table, queries = data
    index = ItemIndex.build(table, cfg=IndexConfig("hnsw"))
    assert recall_at_k(index.search(queries, 10)[1], exact_top10, 10) >= HNSW_DEFAULT_RECALL10


def test_ivf_recall(data: tuple[np.ndarray, np.ndarray], exact_top10: np.ndarray) -> None:
    table, queries = data
    index = ItemIndex.build(table, cfg=IndexConfig("ivf", nprobe=128))
    assert index.cfg.nlist == 512  # min(4 * sqrt(20000), 20000 / 39)
    assert recall_at_k(index.search(queries, 10)[1], exact_top10, 10) >= IVF_NPROBE128_RECALL10
    # the knob works in place: fewer probes, lower recall
    index.set_search_params(nprobe=4)
    assert recall_at_k(index.search(queries, 10)[1], exact_top10, 10) < IVF_NPROBE128_RECALL10


def test_ivfpq_recall_and_refine(data: tuple[np.ndarray, np.ndarray], exact_top10: np.ndarray) -> None:
    table, queries = data
    index = ItemIndex.build(table, cfg=IndexConfig("ivfpq", nprobe=128))
    assert index.cfg.nlist == 512 and index.cfg.pq_m == DIM // 2
    refined = recall_at_k(index.search(queries, 10)[1], exact_top10, 10)
    assert refined >= IVFPQ_NPROBE128_RECALL10
    scores, ids = index.search(queries[:5], 10)  # re-ranked scores are the exact dot products
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries[:5], table[ids]), rtol=1e-4, atol=1e-4)
    index.set_search_params(refine=1)  # PQ scores alone: approximate ranking, lower recall
    assert recall_at_k(index.search(queries, 10)[1], exact_top10, 10) < refined
    with pytest.raises(ValueError, match="pq_m=5 must divide"):
        ItemIndex.build(table[:2000], cfg=IndexConfig("ivfpq", nlist=8, pq_m=5))


@pytest.mark.parametrize("impl", ["reservoir", "probe_parallel", "probe_parallel_reservoir"])
def test_ivfpq_fastscan_impls_same_results(data: tuple[np.ndarray, np.ndarray], impl: str) -> None:
    """Another FAISS fast-scan implementation (2 threads, one query per call as a server searches) must find
    the same items with the same exact scores."""
    import faiss

    table, queries = data
    index = ItemIndex.build(table[:5001], cfg=IndexConfig("ivfpq", nlist=64, nprobe=16, refine=4))
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        ref = [index.search(q[None], 10) for q in queries[:40]]
        index.set_search_params(fastscan=impl)
        assert index._ivf().implem == FASTSCAN_IMPLS[impl] != 0
        other = [index.search(q[None], 10) for q in queries[:40]]
    finally:
        faiss.omp_set_num_threads(prev)
    for (s0, i0), (s1, i1) in zip(ref, other, strict=True):
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_allclose(s0, s1, rtol=1e-5)
    with pytest.raises(ValueError, match="fastscan"):
        index.set_search_params(fastscan="fast")


def test_ivf_default_recall_clustered() -> None:
    rng = np.random.default_rng(1)
    centers = 3.0 * rng.standard_normal((200, DIM)).astype(np.float32)
    vecs = (centers[rng.integers(0, 200, N_ITEMS)] + rng.standard_normal((N_ITEMS, DIM))).astype(np.float32)
    queries = (centers[rng.integers(0, 200, 200)] + rng.standard_normal((200, DIM))).astype(np.float32)
    ids = np.arange(1, N_ITEMS + 1)
    exact = build_index(vecs, ids).search(queries, 10)[1]
    approx = build_index(vecs, ids, IndexConfig("ivf")).search(queries, 10)[1]
    assert recall_at_k(approx, exact, 10) >= IVF_DEFAULT_CLUSTERED_RECALL10


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_save_load_round_trip(tmp_path, data: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    table, queries = data
    cfg = IndexConfig(kind, nlist=32, nprobe=7, hnsw_m=8, ef_search=40,
                      fastscan="probe_parallel" if kind == "ivfpq" else "auto")
    index = ItemIndex.build(table[:3000], cfg=cfg)
    before = index.search(queries, 20)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["metric"] == "inner_product" and meta["size"] == 2999 and meta["config"]["kind"] == kind
    loaded = load_index(tmp_path / "idx")
    assert loaded.cfg == index.cfg and loaded.size == 2999 and loaded.dim == DIM
    if kind == "ivfpq":  # search knobs are re-applied to the loaded FAISS index
        assert loaded._ivf().nprobe == 7 and loaded._ivf().implem == 14
    np.testing.assert_array_equal(loaded.ids, index.ids)
    after = loaded.search(queries, 20)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    np.testing.assert_allclose(loaded.reconstruct(), table[1:3000], rtol=1e-6)


def test_load_errors(tmp_path, data: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(FileNotFoundError, match="not a saved index"):
        load_index(tmp_path)
    ItemIndex.build(data[0][:50]).save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    meta["config"]["nprobes"] = 3
    (tmp_path / "i" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown IndexConfig keys"):
        load_index(tmp_path / "i")


def test_exclude_seen(data: tuple[np.ndarray, np.ndarray]) -> None:
    table, queries = data
    index = ItemIndex.build(table[:2001])
    k = 10
    _, plain = index.search(queries[:3], k)
    seen = [set(plain[0, :4].tolist()), set(), {plain[2, 0].item(), 999_999}]  # unknown ids are harmless
    scores, ids = index.search(queries[:3], k, exclude=seen)
    assert ids.shape == (3, k) and (ids != MISSING_ID).all()
    for r in range(3):
        assert not set(ids[r].tolist()) & seen[r]
    np.testing.assert_array_equal(ids[0], index.search(queries[:1], k + 4)[1][0, 4:])
    np.testing.assert_array_equal(ids[1], plain[1])
    # excluding almost everything: the tail is padded with MISSING_ID / -inf, never with seen items
    all_but_3 = [set(range(4, 2001))]
    s, i = index.search(queries[:1], 5, exclude=all_but_3)
    assert sorted(i[0, :3].tolist()) == [1, 2, 3] and (i[0, 3:] == MISSING_ID).all()
    assert np.isneginf(s[0, 3:]).all()


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(approx, exact, 4) == pytest.approx((2 / 4 + 1) / 2)
    assert recall_at_k(approx, exact, 2) == pytest.approx((0 + 1) / 2)
    assert recall_at_k(np.full((1, 2), -1), np.array([[1, 2]]), 2) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(approx, exact, 5)
    with pytest.raises(ValueError):
        recall_at_k(approx[:1], exact, 2)


def test_index_report(data: tuple[np.ndarray, np.ndarray]) -> None:
    table, queries = data
    index = ItemIndex.build(table[:3000], cfg=IndexConfig("hnsw", hnsw_m=8, ef_search=16))
    rep = index_report(index, queries, k=10, num_queries=100, latency_queries=20)
    assert rep["kind"] == "hnsw" and rep["num_queries"] == 100 and rep["k"] == 10
    assert 0.0 < rep["recall_at_k"] <= 1.0
    assert rep["latency_ms"]["p50"] > 0 and rep["latency_ms"]["p99"] >= rep["latency_ms"]["p50"]
    assert 0 <= rep["cpu_ms"]["p50"] <= rep["cpu_ms"]["p99"]
    flat = index_report(ItemIndex.build(table[:3000]), queries, k=10, num_queries=50, latency_queries=5)
    assert flat["recall_at_k"] == 1.0


def test_errors(data: tuple[np.ndarray, np.ndarray]) -> None:
    table, queries = data
    index = ItemIndex.build(table[:101])  # 100 items
    with pytest.raises(ValueError, match="dimension"):
        index.search(queries[:, :16], 5)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 101)
    assert index.search(queries, 100)[1].shape == (N_QUERIES, 100)
    bad = table[:101].copy()
    bad[5, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ItemIndex.build(bad)
    q = queries[:2].copy()
    q[1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        index.search(q, 3)
    with pytest.raises(ValueError, match="exclude"):
        index.search(queries[:2], 3, exclude=[{1}])
    with pytest.raises(ValueError, match="unique"):
        build_index(table[:3], ids=[1, 1, 2])
    with pytest.raises(ValueError, match="only the padding"):
        build_index(table[:1])
    with pytest.raises(ValueError, match="nlist"):
        build_index(table[:101], cfg=IndexConfig("ivf", nlist=1000))
    with pytest.raises(ValueError, match="kind"):
        IndexConfig("l2")
    with pytest.raises(ValueError, match="unknown IndexConfig keys"):
        IndexConfig.from_dict({"kind": "hnsw", "efSearch": 10})
    with pytest.raises(ValueError, match="nprobe"):
        IndexConfig.from_dict({"kind": "ivf", "nprobe": "8"})
    with pytest.raises(ValueError, match="ef_search"):
        ItemIndex.build(table[:20], cfg=IndexConfig("hnsw")).set_search_params(ef_search=0)
