"""MovieLens 1M official formats: ratings.dat, movies.dat, users.dat ('::'-separated), also inside ml-1m.zip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from t2diff.data.errors import DataError, where
from t2diff.data.interactions import Interactions
from t2diff.data.textio import decode, read_bytes, split_lines
from t2diff.data.values import NEGATIVE_TIME, first_bad_rating, first_negative_time

RATINGS_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")


def _int(value: str, path: Path, line: int, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where(path, line, field)}: {value!r} is not an integer") from None


def _rows(path: Path, member: str, encoding: str, fields: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    text = decode(read_bytes(path, member), path, encoding)
    out = []
    for no, line in enumerate(split_lines(text, path), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != len(fields):
            raise DataError(f"{where(path, no)}: expected {len(fields)} fields separated by '::' "
                            f"({'::'.join(fields)}), got {len(parts)}: {line[:80]!r}")
        out.append((no, parts))
    return out


def read_ratings(path: Path, encoding: str = "utf-8", allow_fractional_ratings: bool = False) -> Interactions:
    """``UserID::MovieID::Rating::Timestamp`` (ratings.dat or ml-1m.zip). File order is kept as a tie-break.
    Ratings are whole stars (ML-1M) unless ``allow_fractional_ratings`` (MovieLens 10M's half stars); the value
    rules are those of ``t2diff.data.values``."""
    rows = _rows(path, "ratings.dat", encoding, RATINGS_FIELDS)
    n = len(rows)
    users = np.empty(n, np.int64)
    items = np.empty(n, np.int64)
    ratings = np.empty(n, np.float64)
    times = np.empty(n, np.int64)
    for k, (no, (u, i, r, t)) in enumerate(rows):
        users[k] = _int(u, path, no, "UserID")
        items[k] = _int(i, path, no, "MovieID")
        try:
            ratings[k] = float(r)
        except ValueError:
            raise DataError(f"{where(path, no, 'Rating')}: {r!r} is not a number") from None
        times[k] = _int(t, path, no, "Timestamp")
    # value rules checked on the whole arrays (cheap next to the loop), then the first offender is located
    k = first_negative_time(times)
    if k is not None:
        no, parts = rows[k]
        raise DataError(f"{where(path, no, 'Timestamp')}: {parts[3]!r} {NEGATIVE_TIME}")
    bad = first_bad_rating(ratings, allow_fractional_ratings)
    if bad is not None:
        no, parts = rows[bad[0]]
        raise DataError(f"{where(path, no, 'Rating')}: {parts[2]!r} {bad[1]}")
    return Interactions(users, items, times=times, ratings=ratings, sources=[str(path)])


def read_movies(path: Path, encoding: str = "latin-1") -> dict[str, list[str]]:
    """``MovieID::Title::Genres`` -> {movie id: ["genre=Comedy", ...]} (genres are the side features)."""
    feats: dict[str, list[str]] = {}
    for no, (mid, _title, genres) in _rows(path, "movies.dat", encoding, ("MovieID", "Title", "Genres")):
        key = str(_int(mid, path, no, "MovieID"))
        feats[key] = [f"genre={g}" for g in genres.strip().split("|") if g]
    return feats


def read_users(path: Path, encoding: str = "latin-1") -> dict[str, dict[str, str]]:
    """``UserID::Gender::Age::Occupation::Zip-code`` -> {user id: {field: value}}."""
    fields = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
    out: dict[str, dict[str, str]] = {}
    for no, parts in _rows(path, "users.dat", encoding, fields):
        uid = str(_int(parts[0], path, no, "UserID"))
        _int(parts[2], path, no, "Age")
        _int(parts[3], path, no, "Occupation")
        out[uid] = dict(zip(fields[1:], parts[1:], strict=True))
    return out
