"""``t2diff prepare``: filter, remap ids (0 = padding), order chronologically, cache compactly.

Cache layout (all deterministic: the same input gives byte-identical files):
  meta.json          counts, sources with sha256, filter settings
  user_ptr.npy       int64 [U+1]  user u's items are items[user_ptr[u-1]:user_ptr[u]] (internal users 1..U)
  items.npy          int32 [N]    internal item ids 1..I, each user's history oldest first
  times.npy          int64 [N]    unix seconds (only when the source has timestamps)
  file_rows.npy      int64 [N]    index of each interaction among the rows the reader returned (the source files'
                                  rows in file order, before filtering): each history in file order is its rows
                                  sorted by this (data.paper.history_order: file). Caches made before it lack it.
  user_ids.txt       original user id of internal id k on line k
  item_ids.txt       original item id of internal id k on line k
  item_features.npy  int32 [I+1, F] feature tokens per item, 0 = none (only with side features)
  feature_vocab.txt  token k on line k
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from t2diff.data.errors import DataError
from t2diff.data.interactions import Interactions

FORMAT_VERSION = 1


@dataclass
class FilterSpec:
    min_user_interactions: int = 5
    min_item_interactions: int = 1
    min_rating: float | None = None
    max_core_iterations: int = 100


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def apply_filters(inter: Interactions, spec: FilterSpec) -> Interactions:
    if spec.min_rating is not None:
        if inter.ratings is None:
            raise DataError("min_rating is set but the source has no rating column")
        inter = inter.select(inter.ratings >= spec.min_rating)
    # iterate to a fixed point: dropping items can push users under their minimum and vice versa
    for _ in range(spec.max_core_iterations):
        _, uinv, ucnt = np.unique(inter.users, return_inverse=True, return_counts=True)
        _, iinv, icnt = np.unique(inter.items, return_inverse=True, return_counts=True)
        keep = (ucnt[uinv] >= spec.min_user_interactions) & (icnt[iinv] >= spec.min_item_interactions)
        if keep.all():
            break
        inter = inter.select(keep)
    if len(inter) == 0:
        raise DataError(f"no interactions left after filtering ({asdict(spec)})")
    return inter


def _sort_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ids in a stable natural order (numeric for ints, lexicographic for strings) and inverse."""
    uniq, inv = np.unique(ids, return_inverse=True)
    return uniq, inv


def prepare(inter: Interactions, out_dir: Path, spec: FilterSpec, dataset: str, extra_meta: dict | None = None) -> dict:
    """Write the cache for ``inter`` into ``out_dir`` and return its meta."""
    if len(inter) == 0:
        raise DataError("the source has no interactions")
    raw_count = len(inter)
    # the read order, before the filters drop rows (the authors read ratings.dat in file order)
    inter = replace(inter, rows=np.arange(raw_count, dtype=np.int64))
    inter = apply_filters(inter, spec)
    uniq_u, uidx = _sort_ids(inter.users)
    uniq_i, iidx = _sort_ids(inter.items)
    uid = uidx.astype(np.int64) + 1
    iid = iidx.astype(np.int64) + 1
    n = len(inter)
    row = np.arange(n)
    keys = [row]
    if inter.order is not None:
        keys.append(inter.order)
    if inter.times is not None:
        keys.append(inter.times)
    keys.append(uid)
    perm = np.lexsort(keys)  # primary key last: user, then time, then order, then file row (stable)
    uid, iid = uid[perm], iid[perm]
    counts = np.bincount(uid, minlength=len(uniq_u) + 1)[1:]
    user_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("times.npy", "item_features.npy", "feature_vocab.txt"):
        (out_dir / stale).unlink(missing_ok=True)
    np.save(out_dir / "user_ptr.npy", user_ptr)
    np.save(out_dir / "items.npy", iid.astype(np.int32))
    assert inter.rows is not None
    np.save(out_dir / "file_rows.npy", inter.rows[perm].astype(np.int64))
    if inter.times is not None:
        np.save(out_dir / "times.npy", inter.times[perm].astype(np.int64))
    _write_ids(out_dir / "user_ids.txt", uniq_u)
    _write_ids(out_dir / "item_ids.txt", uniq_i)
    feat_meta = None
    if inter.item_features:
        feat_meta = _write_features(out_dir, uniq_i, inter.item_features)

    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "num_users": int(len(uniq_u)),
        "num_items": int(len(uniq_i)),
        "num_interactions": int(n),
        "num_raw_interactions": int(raw_count),
        "has_time": inter.times is not None,
        "id_type": {"user": "int" if uniq_u.dtype != object else "str",
                    "item": "int" if uniq_i.dtype != object else "str"},
        "sources": [{"file": Path(s).name, "sha256": sha256(Path(s))} for s in inter.sources],
        "filters": asdict(spec),
        "item_features": feat_meta,
        "history_length": {"min": int(counts.min()), "max": int(counts.max()), "mean": round(float(counts.mean()), 4)},
        **(extra_meta or {}),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _write_ids(path: Path, ids: np.ndarray) -> None:
    lines = [str(x) for x in ids]
    for k, s in enumerate(lines):
        if "\n" in s or "\r" in s:
            raise DataError(f"original id {s!r} (internal id {k + 1}) contains a line break")
    path.write_text("<pad>\n" + "\n".join(lines) + "\n")


def _write_features(out_dir: Path, item_ids: np.ndarray, feats: dict[str, list[str]]) -> dict:
    per_item = [feats.get(str(x), []) for x in item_ids]
    vocab = sorted({t for toks in per_item for t in toks})
    index = {t: k + 1 for k, t in enumerate(vocab)}
    width = max((len(t) for t in per_item), default=0) or 1
    mat = np.zeros((len(item_ids) + 1, width), dtype=np.int32)
    for i, toks in enumerate(per_item, start=1):
        mat[i, : len(toks)] = [index[t] for t in toks]
    np.save(out_dir / "item_features.npy", mat)
    (out_dir / "feature_vocab.txt").write_text("<pad>\n" + "".join(t + "\n" for t in vocab))
    covered = sum(1 for t in per_item if t)
    return {"num_tokens": len(vocab) + 1, "width": width, "items_with_features": covered}


def rebuild(meta: dict, out_dir: Path) -> dict:
    """Re-prepare a deleted cache from the recipe its meta.json recorded (``t2diff prepare`` writes one) and
    check that the result is the same dataset: the same meta, hence the same source files (sha256), filters
    and counts. Returns the new meta."""
    from t2diff.data.sources import SourceSpec, load_source

    recipe = meta.get("recipe")
    if not recipe:
        raise DataError(f"{out_dir}: the prepared dataset is gone and its meta records no recipe to rebuild it "
                        "(it was not made by `t2diff prepare`); prepare it again and pass its folder")
    extra = {k: meta[k] for k in ("reader", "recipe") if k in meta}
    new = prepare(load_source(SourceSpec.from_recipe(recipe["source"])), out_dir, FilterSpec(**recipe["filters"]),
                  meta["dataset"], extra)
    if new != meta:
        diff = sorted(k for k in set(new) | set(meta) if new.get(k) != meta.get(k))
        raise DataError(f"{out_dir}: rebuilt from its recipe, but the result differs from the recorded dataset in "
                        f"{diff} (the source files changed?)")
    return new
