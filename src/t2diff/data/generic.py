"""Generic interaction logs: CSV / TSV / Parquet with configurable column names.

Errors name the file's real line (blank lines, which pandas skips, are counted; a quoted field spanning lines is
followed, so the line is where the row starts) and show the value as written. The line is found only when there
is an error, by reading the file again with the csv module, so a good file costs nothing extra.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

import numpy as np
import pandas as pd

from t2diff.data.errors import DataError, where
from t2diff.data.interactions import Interactions
from t2diff.data.values import BEFORE_EPOCH, NEGATIVE_TIME, first_bad_rating, first_negative_time, first_true

try:
    from pandas.tseries.api import guess_datetime_format
except ImportError:  # pandas < 2.2
    from pandas._libs.tslibs.parsing import guess_datetime_format

TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass
class ColumnSpec:
    user: str = "user_id"
    item: str = "item_id"
    time: str | None = None  # unix time (see time_unit) or a date-time string
    order: str | None = None  # explicit position in the user's history
    rating: str | None = None
    time_unit: str = "s"


@dataclass
class Table:
    """The columns read from one file, and how to point at one of its values in an error."""

    path: Path
    df: pd.DataFrame
    names: list[str]  # all of the file's columns in file order: a field's position on its line
    sep: str | None = None  # None: Parquet, whose values are at rows, not lines
    encoding: str = "utf-8"

    def record(self, row: int) -> tuple[int, list[str]] | None:
        """(1-based file line, raw fields) of data row ``row`` (0-based, as pandas counts); None for Parquet or
        when the file cannot be followed (then errors fall back to the row number)."""
        if self.sep is None:
            return None
        try:
            with open(self.path, newline="", encoding=self.encoding) as f:
                return _nth_record(f, self.sep, row)
        except (OSError, UnicodeDecodeError, csv.Error, re.error):
            return None

    def fail(self, row: int, col: str, reason: str) -> NoReturn:
        """Raise "<file> line L, field F: '<value as written>' <reason>"."""
        rec = self.record(row)
        pos = self.names.index(col) if col in self.names else -1
        if rec is not None and 0 <= pos < len(rec[1]):
            shown = rec[1][pos]
        else:
            shown = _plain(self.df[col].iloc[row])
        raise DataError(f"{self._where(row, col, rec)}: {shown!r} {reason}")

    def fail_missing(self, row: int, col: str) -> NoReturn:
        """Raise for a missing value, saying whether the field is empty or the line is short of fields."""
        rec = self.record(row)
        pos = self.names.index(col) if col in self.names else -1
        if rec is None or pos < 0:
            what = "value is missing"
        elif pos >= len(rec[1]):
            what = f"value is missing: too few fields (the line has {len(rec[1])}, the header {len(self.names)})"
        elif not rec[1][pos].strip():
            what = "value is empty"
        else:
            what = f"{rec[1][pos]!r} is read as a missing value"
        raise DataError(f"{self._where(row, col, rec)}: {what}")

    def _where(self, row: int, col: str, rec: tuple[int, list[str]] | None) -> str:
        if rec is not None:
            return where(self.path, rec[0], col)
        return where(self.path, field=col, row=row + 1)  # Parquet (or a file csv cannot follow)


def _records(f: TextIO, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each record, blank lines included (as [] or one blank field)."""
    if len(sep) == 1:
        reader = csv.reader(f, delimiter=sep)  # pandas' default quoting is csv's
        end = 0
        for fields in reader:
            yield end + 1, fields
            end = reader.line_num
    else:  # pandas reads a longer separator as a regular expression, without quoting
        pat = re.compile(sep)
        for no, line in enumerate(f, start=1):
            yield no, pat.split(line.rstrip("\r\n"))


def _nth_record(f: TextIO, sep: str, row: int) -> tuple[int, list[str]] | None:
    # pandas (skip_blank_lines) skips lines of only spaces/tabs, before the header too; the separator is a field
    blank = " \t".replace(sep, "")
    k = -2  # the first non-blank record is the header
    for line, fields in _records(f, sep):
        if not fields or (len(fields) == 1 and not fields[0].strip(blank)):
            continue
        k += 1
        if k == row:
            return line, fields
    return None


def _plain(value: object) -> object:
    """A value as a plain Python object, so messages show 1.5, not np.float64(1.5)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


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
               dtype: dict[str, type] | type | None = None) -> Table:
    """Read the named columns of a CSV/TSV/Parquet file with errors that name the file, line and column.
    Only empty fields are missing: 'NA', 'null', 'nan' are kept as written (an id 'NA' is an id; a rating 'nan'
    is reported as such)."""
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
        return Table(path, pd.read_parquet(path, columns=columns), names)
    if sep is None:
        sep = "\t" if suffix.endswith((".tsv", ".tab")) else ","
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except UnicodeDecodeError:
        raise DataError(_line_of_bad_byte(path, encoding) + " (pass the file's real encoding)") from None
    names = list(header.columns)
    _check_columns(path, columns, names)
    try:
        # all columns are read (not usecols) so a line with too many fields is an error, not ignored
        df = pd.read_csv(path, sep=sep, encoding=encoding, dtype=dtype or {}, index_col=False,
                         keep_default_na=False, na_values=[""])[columns]
    except UnicodeDecodeError:
        raise DataError(_line_of_bad_byte(path, encoding) + " (pass the file's real encoding)") from None
    except pd.errors.ParserError as e:
        # pandas: "Error tokenizing data. C error: Expected 3 fields in line 5, saw 4" (real file lines)
        raise DataError(f"{path}: wrong number of fields: {str(e).split('C error: ')[-1].strip()}") from None
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    if len(df) == 0:
        raise DataError(f"{path}: has a header but no data rows")
    return Table(path, df, names, sep, encoding)


def _check_columns(path: Path, wanted: list[str], have: list[str]) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; the file's columns are {have}")


def missing_check(t: Table, col: str) -> None:
    """Fail on the column's first missing value (an empty field, or a line short of fields)."""
    row = first_true(t.df[col].isna().to_numpy())
    if row is not None:
        t.fail_missing(row, col)


def _numbers(t: Table, col: str, reason: str = "is not a number") -> pd.Series:
    """The column as numbers (after the missing check), failing on the first value that is not one."""
    s = t.df[col]
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s
    num = pd.to_numeric(s, errors="coerce")
    row = first_true(num.isna().to_numpy())
    # 'nan' is a number that the caller's rules reject at this row or before, so they report the first error
    if row is not None and not _is_nan_text(s.iloc[row]):
        t.fail(row, col, reason)
    return num


def _is_nan_text(value: object) -> bool:
    try:
        return bool(np.isnan(float(str(value))))
    except ValueError:
        return False


def to_int_column(t: Table, col: str, not_number: str = "is not an integer") -> np.ndarray:
    """An integer column, failing on the first value that is not an integer (``not_number``: the reason given
    for text that is no number at all)."""
    missing_check(t, col)
    num = _numbers(t, col, not_number)
    if pd.api.types.is_integer_dtype(num):
        return num.to_numpy(dtype=np.int64)
    f = num.to_numpy(dtype=np.float64)
    row = first_true(~np.isfinite(f) | (np.floor(f) != f))
    if row is not None:
        t.fail(row, col, "is not an integer")
    return num.to_numpy(dtype=np.int64)


def to_unix_times(t: Table, col: str, not_number: str = "is not an integer") -> np.ndarray:
    """A numeric timestamp column as non-negative integers (in the column's own unit)."""
    times = to_int_column(t, col, not_number)
    row = first_negative_time(times)
    if row is not None:
        t.fail(row, col, NEGATIVE_TIME)
    return times


def _is_number(value: object) -> bool:
    return bool(pd.notna(pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]))


def to_seconds(t: Table, col: str, unit: str) -> np.ndarray:
    """Unix seconds from numbers in ``unit`` or from date-times. The column's first value decides which: when
    it is a number, every value must be one (so 'abc' is blamed at its own line, not parsed as a date)."""
    if unit not in TIME_UNITS:
        raise DataError(f"time_unit must be one of {sorted(TIME_UNITS)}, got {unit!r}")
    missing_check(t, col)
    s = t.df[col]
    if pd.api.types.is_datetime64_any_dtype(s):  # Parquet timestamps
        parsed = pd.to_datetime(s, utc=True)
    elif pd.api.types.is_numeric_dtype(s) or _is_number(s.iloc[0]):
        why = f"is not a number (the column's first value is one, so it holds unix times in {unit})"
        return to_unix_times(t, col, why) // TIME_UNITS[unit]
    else:
        parsed, fmt = _parse_datetimes(s)
        row = first_true(parsed.isna().to_numpy())
        if row is not None:
            t.fail(row, col, "is neither a number nor a date-time" if row == 0
                   else f"is not a date-time in the column's format ({fmt}, from its first value)")
    # resolution-independent (pandas may store ns or us): whole seconds since the epoch
    secs = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    row = first_negative_time(secs)
    if row is not None:
        t.fail(row, col, BEFORE_EPOCH)
    return secs


def _parse_datetimes(s: pd.Series) -> tuple[pd.Series, str]:
    """Parse with one format taken from the first value (ISO 8601, else pandas' guess), never letting pandas
    infer one per call: inference warns and falls back to parsing each value on its own."""
    first = s.iloc[:1].astype(str)
    if pd.to_datetime(first, format="ISO8601", utc=True, errors="coerce").notna().iloc[0]:
        fmt = "ISO8601"
    else:
        fmt = guess_datetime_format(first.iloc[0]) or "mixed"  # "mixed": dateutil, value by value
    return pd.to_datetime(s.astype(str), format=fmt, utc=True, errors="coerce"), fmt


def to_ratings(t: Table, col: str, allow_fractional: bool = False) -> np.ndarray:
    """Ratings as float64: numbers, finite, non-negative, whole unless ``allow_fractional``."""
    missing_check(t, col)
    r = _numbers(t, col).to_numpy(dtype=np.float64)  # 'nan' / 'inf' are numbers here; the rules reject them
    bad = first_bad_rating(r, allow_fractional)
    if bad is not None:
        row, reason = bad
        t.fail(row, col, reason)
    return r


def read_interactions(path: Path, cols: ColumnSpec, sep: str | None = None, encoding: str = "utf-8",
                      allow_fractional_ratings: bool = False) -> Interactions:
    """One interactions file. Ids are kept as strings or integers exactly as written."""
    wanted = [c for c in (cols.user, cols.item, cols.time, cols.order, cols.rating) if c]
    t = read_table(path, wanted, sep=sep, encoding=encoding, dtype={cols.user: str, cols.item: str})
    for c in (cols.user, cols.item):
        missing_check(t, c)
    times = to_seconds(t, cols.time, cols.time_unit) if cols.time else None
    order = to_int_column(t, cols.order) if cols.order else None
    ratings = to_ratings(t, cols.rating, allow_fractional_ratings) if cols.rating else None
    return Interactions(normalise_ids(t.df[cols.user]), normalise_ids(t.df[cols.item]), times=times, order=order,
                        ratings=ratings, sources=[str(path)])
