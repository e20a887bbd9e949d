"""Export a trained run for serving: item embeddings with their original ids, the inner-product index, and
(for ANN kinds) the index's recall against exact search on the run's real test users.

Layout of an export folder::

    export.json        provenance: checkpoint path + sha256, dataset path, model, dim, index config, files
    items.npy          float32 [I, D], row r = item item_ids.txt line r (internal id r + 1)
    item_ids.txt       original item ids, one per line
    items.parquet      item_id (original, int64 where the dataset's ids are integers, else string),
                       embedding (fixed-size list<float32>[D])
    index/             ItemIndex.save: index.faiss, ids.npy (INTERNAL ids 1..I), index.json
    index_report.json  ANN kinds only: recall@K vs exact search and single-query latency (index_report)
    user_tower.onnx    only with onnx=True: the user tower for onnxruntime (onnx_tower.py); export.json's "onnx"
                       entry gives its inputs, opset, versions and the onnxruntime-vs-PyTorch check
    model.pt           only with copy_checkpoint=True
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2diff.checkpoint import resolve
from t2diff.data.prepare import sha256
from t2diff.retrieval.index import IndexConfig, ItemIndex, index_report
from t2diff.retrieval.user_tower import Retriever, UserTower

EXPORT_FORMAT = 1
_META = "export.json"
RUNTIMES = ("torch", "onnx")


class ExportError(ValueError):
    """An export folder that is missing, malformed, or does not belong to the given checkpoint."""


def load_tower(checkpoint: str | Path, data_path: str | None = None) -> tuple[UserTower, Path, str]:
    """(tower, checkpoint file, its sha256). Hashes before and after loading: a run still training may
    rewrite best.pt in between, and an export must describe the weights it holds."""
    from t2diff.retrieval.ids import ItemCatalog
    from t2diff.run import load_run

    ck = resolve(checkpoint)  # the checkpoint the run directory's last.pt records
    sha = sha256(ck)
    run = load_run(ck, data_path)  # the model from the checkpoint alone; the dataset only if a step needs it
    if sha256(ck) != sha:
        raise ExportError(f"{ck} changed while it was being loaded (is a training run writing it?); retry")
    catalog = ItemCatalog(run.item_ids[1:], run.meta.get("id_type", {}).get("item") == "int")
    tower = UserTower(run.model, run.cfg, lambda: run.ds, catalog=catalog, has_time=run.info.has_time)
    return tower, ck, sha


def _test_examples(tower: UserTower, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, positions) of a seeded sample of <= n of the run's protocol test examples."""
    from t2diff.run import build_split

    ex = build_split(tower.cfg, tower.ds).test
    idx = np.arange(len(ex))
    if len(ex) > n:
        idx = np.sort(np.random.default_rng(seed).choice(len(ex), size=n, replace=False))
    return ex.users[idx], ex.positions[idx]


@torch.no_grad()
def sample_test_queries(tower: UserTower, n: int = 1000, seed: int = 0) -> np.ndarray:
    """User embeddings [<= n, D] of a seeded sample of the run's protocol test examples (real users, each
    with the history before its held-out target): the realistic query set for an ANN recall report."""
    from t2diff.data.batching import make_batch

    users, positions = _test_examples(tower, n, seed)
    out = []
    for s in range(0, len(users), 256):
        batch = make_batch(tower.ds, users[s: s + 256], positions[s: s + 256], tower.max_len)
        out.append(tower.model.user_embeddings(batch).detach().float().cpu().numpy())
    return np.concatenate(out)


def export_onnx(tower: UserTower, out: Path, rows: int = 64, atol: float = 1e-5, log: Any = print) -> dict[str, Any]:
    """Write out/user_tower.onnx, checked against PyTorch on ``rows`` test histories (and one alone)."""
    from t2diff.data.batching import make_batch
    from t2diff.retrieval.onnx_tower import export_user_tower

    users, positions = _test_examples(tower, rows, seed=0)
    sample = make_batch(tower.ds, users, positions, tower.max_len)
    info = export_user_tower(tower, out, sample, atol=atol, log=log)
    info["check"]["histories"] = f"{tower.cfg.data.protocol} test examples (seed 0)"
    return info


def export_run(checkpoint: str | Path, out: str | Path, index_cfg: IndexConfig | None = None, *,
               report_k: int = 100, report_queries: int = 1000, copy_checkpoint: bool = False,
               data_path: str | None = None, onnx: bool = False, onnx_rows: int = 64, onnx_atol: float = 1e-5,
               log: Any = print) -> dict[str, Any]:
    """Write an export folder (layout in the module docstring); returns the export.json content. With ``onnx``
    also user_tower.onnx; the export fails (OnnxError) unless onnxruntime matches PyTorch within onnx_atol
    on ``onnx_rows`` test histories."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index_cfg = index_cfg or IndexConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tower, ck, sha = load_tower(checkpoint, data_path)
    items = np.ascontiguousarray(tower.item_embeddings()[1:], dtype=np.float32)  # [I, D], padding row dropped
    if not np.isfinite(items).all():
        raise ExportError(f"{ck}: item embeddings contain NaN or inf; the checkpoint is broken")
    num, dim = items.shape
    ids = tower.item_ids[1:]

    # first: the slowest and most fragile step, so a failure leaves the folder as it was
    onnx_info = export_onnx(tower, out, onnx_rows, onnx_atol, log) if onnx else None
    if not onnx:
        (out / "user_tower.onnx").unlink(missing_ok=True)  # a stale graph from an earlier export

    np.save(out / "items.npy", items)
    (out / "item_ids.txt").write_text("\n".join(ids) + "\n")
    id_col = pa.array([tower.original_item(i) for i in range(1, num + 1)],
                      type=pa.int64() if tower.int_item_ids else pa.string())
    emb_col = pa.FixedSizeListArray.from_arrays(pa.array(items.reshape(-1)), dim)
    pq.write_table(pa.table({"item_id": id_col, "embedding": emb_col}), out / "items.parquet")

    t1 = time.perf_counter()
    index = ItemIndex.build(items, np.arange(1, num + 1, dtype=np.int64), index_cfg)  # ids = internal ids
    build_s = time.perf_counter() - t1
    index.save(out / "index")
    log(f"indexed {num} items (dim {dim}) with {index.kind} in {build_s:.2f}s")

    report_file = None
    if index.kind != "flat":  # flat is exact: its recall is 1 by construction
        q = sample_test_queries(tower, report_queries)
        k = min(report_k, index.size)
        rep = index_report(index, q, k, num_queries=None)
        rep["queries"] = f"user embeddings of {len(q)} {tower.cfg.data.protocol} test examples (seed 0)"
        report_file = "index_report.json"
        (out / report_file).write_text(json.dumps(rep, indent=2) + "\n")
        log(f"{index.kind} recall@{k} vs exact = {rep['recall_at_k']:.4f}, single-query latency "
            f"p50 {rep['latency_ms']['p50']:.3f} ms, p99 {rep['latency_ms']['p99']:.3f} ms")

    if copy_checkpoint:
        shutil.copy2(ck, out / "model.pt")
    meta = {
        "format_version": EXPORT_FORMAT,
        "created_unix": int(time.time()),
        "checkpoint": {"path": str(ck.resolve()), "sha256": sha, "copy": "model.pt" if copy_checkpoint else None},
        "data_path": str(Path(tower.cfg.data.path).resolve()),
        "model": tower.model_name,
        "max_len": tower.max_len,
        "uses_time": tower.uses_time,
        "num_items": num,
        "dim": dim,
        "item_id_type": "int" if tower.int_item_ids else "str",
        "index": {"folder": "index", "config": index.cfg.to_dict(), "ids": "internal (item_ids.txt line id-1)",
                  "build_seconds": round(build_s, 3)},
        "report": report_file,
        "onnx": onnx_info,
        "files": ["items.npy", "item_ids.txt", "items.parquet", "index/", *(["user_tower.onnx"] if onnx else [])],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out / _META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def is_export(path: str | Path) -> bool:
    return (Path(path) / _META).is_file()


def load_export(folder: str | Path) -> tuple[dict[str, Any], ItemIndex]:
    f = Path(folder)
    if not is_export(f):
        raise ExportError(f"{f} is not an export folder (no {_META}); run `t2diff export` first")
    meta = json.loads((f / _META).read_text())
    if meta.get("format_version") != EXPORT_FORMAT:
        raise ExportError(f"{f / _META}: unsupported format_version {meta.get('format_version')}")
    return meta, ItemIndex.load(f / meta["index"]["folder"])


def check_export(folder: Path, meta: dict[str, Any], index: ItemIndex, tower: UserTower) -> None:
    """The export must hold this checkpoint's items: same original ids, same embeddings. Comparing the
    vectors (not the file hash) is what matters to the scores, and survives an identical re-save."""
    ids = (folder / "item_ids.txt").read_text().splitlines()
    if ids != tower.item_ids[1:]:
        raise ExportError(f"{folder}: item ids differ from the checkpoint's dataset ({len(ids)} vs "
                          f"{tower.num_items}); export again from this checkpoint")
    exported = np.load(folder / "items.npy", mmap_mode="r")
    current = tower.item_embeddings()[1:]
    if exported.shape != current.shape or not np.allclose(exported, current, rtol=1e-4, atol=1e-5):
        raise ExportError(f"{folder} was exported from different weights ({meta['checkpoint']['path']}, "
                          f"sha256 {meta['checkpoint']['sha256'][:12]}); run `t2diff export` again")
    if index.dim != current.shape[1] or index.size != current.shape[0]:
        raise ExportError(f"{folder}: index holds {index.size} x {index.dim}, the model {current.shape}")


def open_retriever(path: str | Path, export: str | Path | None = None, data_path: str | None = None,
                   runtime: str = "torch", onnx_threads: int = 1) -> Retriever:
    """Run directory / .pt / export folder (+ optional export folder) -> a Retriever.

    - an export folder (alone): its checkpoint (the copy if there is one, else the recorded path) and index;
    - a checkpoint with ``export``: the export's index, checked against the checkpoint;
    - a checkpoint alone: an exact flat index built in memory from the model's item embeddings.

    ``runtime="onnx"``: user vectors from the export's user_tower.onnx on onnxruntime (``onnx_threads``
    intra-op threads), checked against the checkpoint at load; needs an export written with onnx=True.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    path = Path(path)
    if export is None and is_export(path):
        export = path
        meta0 = json.loads((path / _META).read_text())
        copy = meta0.get("checkpoint", {}).get("copy")
        path = path / copy if copy else Path(meta0["checkpoint"]["path"])
        data_path = data_path or meta0.get("data_path")
    if export is None and runtime == "onnx":
        raise ExportError("runtime onnx needs an export folder with user_tower.onnx: run `t2diff export RUN "
                          "--out DIR --onnx` and pass DIR")
    tower, ck, sha = load_tower(path, data_path)
    if export is None:
        items = tower.item_embeddings()[1:]
        index = ItemIndex.build(items, np.arange(1, len(items) + 1, dtype=np.int64), IndexConfig(kind="flat"))
        return Retriever(tower, index, {"checkpoint": str(ck), "sha256": sha, "export": None,
                                        "index": index.cfg.to_dict(), "runtime": runtime})
    export = Path(export)
    meta, index = load_export(export)
    check_export(export, meta, index, tower)
    if runtime == "onnx":
        from t2diff.retrieval.onnx_tower import load_onnx_tower

        tower = load_onnx_tower(export, tower, threads=onnx_threads)
    return Retriever(tower, index, {"checkpoint": str(ck), "sha256": sha, "export": str(export),
                                    "index": index.cfg.to_dict(), "runtime": runtime})
