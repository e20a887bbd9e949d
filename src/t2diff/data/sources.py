"""Named datasets: where their files are and how to read them. ``--data-dir`` else $T2DIFF_DATA_DIR."""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from t2diff.data import kuairand, movielens
from t2diff.data.errors import DataError
from t2diff.data.generic import ColumnSpec, read_interactions
from t2diff.data.interactions import Interactions

DATASETS = ("ml-1m", "kuairand", "generic")

WHERE_TO_GET = {
    "ml-1m": "MovieLens 1M: https://grouplens.org/datasets/movielens/1m/ (put ml-1m/ratings.dat or ml-1m.zip "
             "under the data directory)",
    "kuairand": "KuaiRand: https://kuairand.com/ (zenodo record 10439422; put KuaiRand-Pure/data/"
                "log_standard_*.csv under <data dir>/kuairand/)",
}


@dataclass
class SourceSpec:
    """What ``t2diff prepare`` reads. ``inputs`` overrides the named dataset's default files."""

    dataset: str = "ml-1m"
    data_dir: str | None = None
    inputs: list[str] = field(default_factory=list)
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    sep: str | None = None
    encoding: str = "utf-8"
    filters: list[str] = field(default_factory=lambda: list(kuairand.DEFAULT_FILTERS))
    item_features: str | None = None  # explicit side-feature file (movies.dat / video_features_basic_*.csv)
    features: bool = True  # read the dataset's side features when present
    allow_fractional_ratings: bool = False  # ratings need not be whole stars (MovieLens 10M's half stars)


    def recipe(self) -> dict:
        """This spec as plain data with absolute paths, recorded in the cache's meta.json so the cache can be
        rebuilt later from the same files (``t2diff.data.prepare.rebuild``)."""
        d = asdict(self)
        try:
            d["data_dir"] = str(resolve_data_dir(self.data_dir).resolve())
        except DataError:
            d["data_dir"] = None
        d["inputs"] = [str(Path(x).expanduser().resolve()) if Path(x).expanduser().exists() else x
                       for x in self.inputs]
        if self.item_features:
            d["item_features"] = str(Path(self.item_features).expanduser().resolve())
        return d

    @staticmethod
    def from_recipe(d: dict) -> SourceSpec:
        return SourceSpec(**{**d, "columns": ColumnSpec(**d["columns"])})


def resolve_data_dir(data_dir: str | None) -> Path:
    d = data_dir or os.environ.get("T2DIFF_DATA_DIR")
    if not d:
        raise DataError("no data directory: pass --data-dir or set T2DIFF_DATA_DIR")
    p = Path(d).expanduser()
    if not p.is_dir():
        raise DataError(f"data directory {p} does not exist (from {'--data-dir' if data_dir else 'T2DIFF_DATA_DIR'})")
    return p


def _expand(patterns: list[str], base: Path | None) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat).expanduser()
        if not p.is_absolute() and base is not None and not p.exists():
            p = base / p
        hits = sorted(glob.glob(str(p))) if any(ch in str(p) for ch in "*?[") else [str(p)]
        if not hits:
            raise DataError(f"no file matches {pat!r}")
        out.extend(Path(h) for h in hits)
    return out


def load_source(spec: SourceSpec) -> Interactions:
    """Read a named dataset (or explicit files) into Interactions with side features attached."""
    if spec.dataset not in DATASETS:
        raise DataError(f"unknown dataset {spec.dataset!r}; choose one of {DATASETS}")
    base = None
    if spec.data_dir or os.environ.get("T2DIFF_DATA_DIR") or not spec.inputs:
        base = resolve_data_dir(spec.data_dir)
    if spec.dataset == "generic":
        if not spec.inputs:
            raise DataError("dataset 'generic' needs --input FILE [FILE ...]")
        parts = [read_interactions(p, spec.columns, spec.sep, spec.encoding, spec.allow_fractional_ratings)
                 for p in _expand(spec.inputs, base)]
        inter = _concat(parts)
    elif spec.dataset == "ml-1m":
        inter = _load_ml1m(spec, base)
    else:
        inter = _load_kuairand(spec, base)
    return inter


def _load_ml1m(spec: SourceSpec, base: Path | None) -> Interactions:
    root = base / "ml-1m" if base is not None and (base / "ml-1m").is_dir() else base
    if spec.inputs:
        files = _expand(spec.inputs, root)
    else:
        candidates = [root / "ratings.dat", root / "ml-1m.zip", (base / "ml-1m.zip") if base else None,
                      root / "sequences.tsv"] if root else []
        found = [c for c in candidates if c is not None and c.exists()]
        if not found:
            looked = ", ".join(str(c) for c in candidates if c is not None)
            raise DataError(f"ML-1M not found; looked for {looked}. Get it from {WHERE_TO_GET['ml-1m']}")
        files = [found[0]]
    parts = []
    for f in files:
        if f.name.endswith(".tsv") or f.name.endswith(".csv"):
            # the DiffuRec-derived order-only file: user_id, movie_id, seq_index
            cols = ColumnSpec(user="user_id", item="movie_id", order="seq_index")
            parts.append(read_interactions(f, cols, spec.sep, spec.encoding))
        else:
            parts.append(movielens.read_ratings(f, spec.encoding, spec.allow_fractional_ratings))
    inter = _concat(parts)
    feat_file = Path(spec.item_features) if spec.item_features else (root / "movies.dat" if root else None)
    if spec.features and feat_file is not None and feat_file.exists():
        inter.item_features = movielens.read_movies(feat_file)
        inter.sources.append(str(feat_file))
    return inter


def _load_kuairand(spec: SourceSpec, base: Path | None) -> Interactions:
    if spec.inputs:
        logs = _expand(spec.inputs, base)
    else:
        pattern = str(base / "kuairand" / "**" / "log_standard_*.csv") if base else ""
        logs = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        if not logs:
            raise DataError(f"KuaiRand logs not found; looked for {pattern}. Get them from {WHERE_TO_GET['kuairand']}")
    inter = kuairand.read_logs(logs, spec.filters)
    if spec.item_features:
        feat = Path(spec.item_features)
    else:
        hits = sorted(glob.glob(str(logs[0].parent / "video_features_basic_*.csv")))
        feat = Path(hits[0]) if hits else None
    if spec.features and feat is not None and feat.exists():
        inter.item_features = kuairand.read_video_features(feat)
        inter.sources.append(str(feat))
    return inter


def _concat(parts: list[Interactions]) -> Interactions:
    import numpy as np

    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> np.ndarray | None:
        arrs = [getattr(p, name) for p in parts]
        if any(a is None for a in arrs):
            return None
        if any(a.dtype == object for a in arrs):
            arrs = [a.astype(str).astype(object) for a in arrs]
        return np.concatenate(arrs)

    return Interactions(cat("users"), cat("items"), cat("times"), cat("order"), cat("ratings"),
                        [s for p in parts for s in p.sources])
