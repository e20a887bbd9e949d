"""KuaiRand (Gao et al., CIKM 2022): log_standard_*.csv / log_random_*.csv and video_features_basic_*.csv."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from t2diff.data.errors import DataError
from t2diff.data.generic import missing_check, normalise_ids, read_table, to_int_column, to_unix_times
from t2diff.data.interactions import Interactions

# the paper's filter (§5.1): clicks in the main feed
DEFAULT_FILTERS = ("tab==1", "is_click==1")
LOG_COLUMNS = ["user_id", "video_id", "time_ms"]
CATEGORICAL_VIDEO_COLUMNS = ["author_id", "video_type", "upload_type", "music_type"]


def parse_filter(spec: str) -> tuple[str, int]:
    """'tab==1' -> ('tab', 1)."""
    if "==" not in spec:
        raise DataError(f"filter {spec!r} is not of the form column==integer")
    col, val = (s.strip() for s in spec.split("==", 1))
    try:
        return col, int(val)
    except ValueError:
        raise DataError(f"filter {spec!r}: {val!r} is not an integer") from None


def read_logs(paths: list[Path], filters: tuple[str, ...] | list[str] = DEFAULT_FILTERS) -> Interactions:
    """Concatenate log files (in the order given), keep rows passing every filter, times in seconds."""
    if not paths:
        raise DataError("no KuaiRand log files given")
    conds = [parse_filter(f) for f in filters]
    parts = []
    for p in paths:
        t = read_table(p, LOG_COLUMNS + [c for c, _ in conds if c not in LOG_COLUMNS], dtype={"user_id": str,
                       "video_id": str})
        for col in ("user_id", "video_id"):
            missing_check(t, col)
        keep = np.ones(len(t.df), dtype=bool)
        for col, val in conds:
            keep &= to_int_column(t, col) == val
        time_ms = to_unix_times(t, "time_ms")  # every row, filtered or not: a negative time is a broken file
        df = t.df.loc[keep, ["user_id", "video_id"]].assign(time_ms=time_ms[keep])
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    # order within a user comes from time_ms (stable sort in prepare); keep ms precision as the order key
    return Interactions(normalise_ids(df["user_id"]), normalise_ids(df["video_id"]),
                        times=df["time_ms"].to_numpy(np.int64) // 1000, order=df["time_ms"].to_numpy(np.int64),
                        sources=[str(p) for p in paths])


def read_video_features(path: Path) -> dict[str, list[str]]:
    """video_features_basic_*.csv -> {video id: tokens}: author, type, upload type, music type, each tag,
    and a log2 bucket of the duration."""
    cols = ["video_id", *CATEGORICAL_VIDEO_COLUMNS, "video_duration", "tag"]
    df = read_table(path, cols, dtype=str).df
    out: dict[str, list[str]] = {}
    for row in df.itertuples(index=False):
        vid = str(row.video_id)
        toks = [f"{c}={getattr(row, c)}" for c in CATEGORICAL_VIDEO_COLUMNS if isinstance(getattr(row, c), str)]
        if isinstance(row.tag, str):
            toks += [f"tag={t.strip()}" for t in row.tag.split(",") if t.strip()]
        try:
            dur = float(row.video_duration)
            if dur > 0:
                toks.append(f"duration_log2={int(math.log2(dur / 1000 + 1))}")
        except (TypeError, ValueError):
            pass
        out[vid] = toks
    return out
