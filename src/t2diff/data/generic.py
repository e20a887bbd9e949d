"""Generic interaction logs: CSV / TSV / Parquet with configurable column names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from t2diff.data.errors import DataError
from t2diff.data.interactions import Interactions

TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass
class ColumnSpec:
    user: str = "user_id"
    item: str = "item_id"
    time: str | None = None  # unix time (see time_unit) or a date-time string
    order: str | None = None  # explicit position in the user's history
    rating: str | None = None
    time_unit: str = "s"


def normalise_ids(values: pd.Series) -> np.ndarray:
    """int64 when every id is a canonical integer string (so '007' stays a string), else str objects."""
    s = values.astype(str)
    try:
        as_int = s.astype(np.int64)
    except (ValueError, OverflowError):
        return s.to_numpy(dtype=object)
    if (as_int.astype(str) == s).all():
        return as_int.to_numpy()
    return s.to_numpy(dtype=object)


def _line_of_bad_byte(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return f"{path} line {line}: byte 0x{data[e.start]:02x} is not valid {encoding}"
    return f"{path}: not valid {encoding}"


def read_table(path: Path, columns: list[str], sep: str | None = None, encoding: str = "utf-8",
               dtype: dict[str, type] | None = None) -> pd.DataFrame:
    """Read the named columns of a CSV/TSV/Parquet file with errors that name the file, line and column."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffix = "".join(path.suffixes).lower()
    if suffix.endswith(".parquet") or suffix.endswith(".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        _check_columns(path, columns, names)
        return pd.read_parquet(path, columns=columns)
    if sep is None:
        sep = "\t" if suffix.endswith((".tsv", ".tab")) else ","
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except UnicodeDecodeError:
        raise DataError(_line_of_bad_byte(path, encoding) + " (pass the file's real encoding)") from None
    _check_columns(path, columns, list(header.columns))
    try:
        # all columns are read (not usecols) so a line with too many fields is an error, not ignored
        df = pd.read_csv(path, sep=sep, encoding=encoding, dtype=dtype or {}, index_col=False)[columns]
    except UnicodeDecodeError:
        raise DataError(_line_of_bad_byte(path, encoding) + " (pass the file's real encoding)") from None
    except pd.errors.ParserError as e:
        # pandas: "Error tokenizing data. C error: Expected 3 fields in line 5, saw 4"
        raise DataError(f"{path}: wrong number of fields: {str(e).split('C error: ')[-1].strip()}") from None
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    if len(df) == 0:
        raise DataError(f"{path}: has a header but no data rows")
    return df


def _check_columns(path: Path, wanted: list[str], have: list[str]) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; the file's columns are {have}")


def _missing_check(path: Path, df: pd.DataFrame, col: str) -> None:
    bad = df[col].isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{path} line {row + 2}, field {col}: value is missing (too few fields on the line?)")


def to_int_column(path: Path, df: pd.DataFrame, col: str) -> np.ndarray:
    """An integer column, failing on the first value that is not an integer."""
    _missing_check(path, df, col)
    num = pd.to_numeric(df[col], errors="coerce")
    bad = num.isna().to_numpy() | (num.to_numpy(dtype=np.float64) % 1 != 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{path} line {row + 2}, field {col}: {df[col].iloc[row]!r} is not an integer")
    return num.to_numpy(dtype=np.int64)


def to_seconds(path: Path, df: pd.DataFrame, col: str, unit: str) -> np.ndarray:
    if unit not in TIME_UNITS:
        raise DataError(f"time_unit must be one of {sorted(TIME_UNITS)}, got {unit!r}")
    _missing_check(path, df, col)
    if pd.api.types.is_numeric_dtype(df[col]):
        return to_int_column(path, df, col) // TIME_UNITS[unit]
    parsed = pd.to_datetime(df[col], errors="coerce", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{path} line {row + 2}, field {col}: {df[col].iloc[row]!r} is neither a number "
                        f"nor a date-time")
    # resolution-independent (pandas may store ns or us): whole seconds since the epoch
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def read_interactions(path: Path, cols: ColumnSpec, sep: str | None = None, encoding: str = "utf-8") -> Interactions:
    """One interactions file. Ids are kept as strings or integers exactly as written."""
    wanted = [c for c in (cols.user, cols.item, cols.time, cols.order, cols.rating) if c]
    df = read_table(path, wanted, sep=sep, encoding=encoding, dtype={cols.user: str, cols.item: str})
    for c in (cols.user, cols.item):
        _missing_check(path, df, c)
    times = to_seconds(path, df, cols.time, cols.time_unit) if cols.time else None
    order = to_int_column(path, df, cols.order) if cols.order else None
    ratings = None
    if cols.rating:
        _missing_check(path, df, cols.rating)
        r = pd.to_numeric(df[cols.rating], errors="coerce")
        if r.isna().any():
            row = int(np.argmax(r.isna().to_numpy()))
            raise DataError(f"{path} line {row + 2}, field {cols.rating}: {df[cols.rating].iloc[row]!r} "
                            f"is not a number")
        ratings = r.to_numpy(dtype=np.float64)
    return Interactions(normalise_ids(df[cols.user]), normalise_ids(df[cols.item]), times=times, order=order,
                        ratings=ratings, sources=[str(path)])
