"""Input tables for offline retrieval: reading a file (Parquet / CSV / TSV / JSON lines / JSON) and parsing its
cells (lists of ids, timestamps). No model here: see offline.retrieve_frame for what is done with the rows."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from t2diff.data.values import timestamp_problem
from t2diff.retrieval.requests import InputError

_SPLIT = re.compile(r"[,\s]+")


def read_table(path: str | Path):  # -> pandas.DataFrame (pandas imported lazily: it is slow to import)
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file {p} not found")
    suf = p.suffix.lower()
    if suf in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suf in (".csv", ".tsv", ".txt"):
        # ids stay strings ("007" is not 7); empty cells stay "" rather than NaN
        return pd.read_csv(p, sep="\t" if suf == ".tsv" else ",", dtype=str, keep_default_na=False)
    if suf in (".jsonl", ".ndjson"):
        return pd.read_json(p, lines=True, dtype=False)
    if suf == ".json":
        return pd.read_json(p, dtype=False)
    raise InputError(f"{p}: unsupported input format {suf!r}; use .parquet, .csv, .tsv, .jsonl or .json")


def parse_list(cell: Any) -> list[Any] | None:
    """A table cell holding a list of ids: a list/array, a JSON list string, or a space/comma-separated
    string. None / NaN / "" -> None."""
    if cell is None:
        return None
    if isinstance(cell, (list, tuple, np.ndarray)):
        return list(cell)
    if isinstance(cell, float) and math.isnan(cell):
        return None
    s = str(cell).strip()
    if not s:
        return None
    if s.startswith("["):
        try:
            v = json.loads(s)
        except json.JSONDecodeError as e:
            raise InputError(f"cannot parse {s[:60]!r} as a JSON list: {e}") from e
        if not isinstance(v, list):
            raise InputError(f"{s[:60]!r} is not a list")
        return v
    return [t for t in _SPLIT.split(s) if t]


def parse_timestamps(values: list[Any], where: str) -> list[int]:
    """Cells of a timestamps list (numbers or numeric strings, as CSV gives them) -> unix seconds, checked with
    the readers' rule (t2diff.data.values)."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{where}timestamp {v!r} is not a number") from None
        if not math.isfinite(f) or not f.is_integer():
            raise InputError(f"{where}timestamp {v!r} is not an integer (unix seconds)")
        if (msg := timestamp_problem(int(f))) is not None:
            raise InputError(f"{where}{msg}")
        out.append(int(f))
    return out


def parse_optional_timestamp(cell: Any, where: str) -> int | None:
    """One timestamp cell (e.g. request_time); None / NaN / "" -> None."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() == "":
        return None
    return parse_timestamps([cell], where)[0]


# The names these had in user_tower.py.
