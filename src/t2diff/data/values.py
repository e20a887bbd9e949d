"""Rules for interaction values, shared by the readers and the HTTP service.

- Timestamps are non-negative unix times (integers in the reader's unit; seconds in a request).
- Ratings are finite and non-negative, and whole numbers unless fractional ratings are allowed: ML-1M's format
  says whole stars, while MovieLens 10M uses the same '::' format with half stars (``--allow-fractional-ratings``).

The array checks return the position and the reason of the first value breaking a rule, so each caller names the
value's place (file line, Parquet row, request field) in its own way; reasons read after the value,
e.g. ``f"{where}: {raw!r} {reason}"``.
"""

from __future__ import annotations

import math

import numpy as np

TIMESTAMP_RULE = "timestamps are non-negative unix times"
NEGATIVE_TIME = f"is negative ({TIMESTAMP_RULE})"
BEFORE_EPOCH = f"is before 1970-01-01 UTC ({TIMESTAMP_RULE})"
NOT_FINITE_RATING = "is not a finite number (ratings are finite, non-negative numbers)"
NEGATIVE_RATING = "is negative (ratings are non-negative)"
FRACTIONAL_RATING = ("is not a whole number (ratings are whole stars unless --allow-fractional-ratings is passed, "
                     "e.g. for MovieLens 10M's half stars)")
# what the service says, so its clients see the same words as before the rule moved here
REQUEST_TIMESTAMP_RULE = "timestamps must be non-negative integers (unix seconds)"


def first_true(mask: np.ndarray) -> int | None:
    """Position of the first True, or None."""
    if not mask.any():
        return None
    return int(np.argmax(mask))


def first_negative_time(times: np.ndarray) -> int | None:
    """Position of the first negative timestamp (integers in any unit), or None."""
    return first_true(np.asarray(times) < 0)


def rating_problem(value: float, allow_fractional: bool = False) -> str | None:
    """Why one rating breaks the rules (a reason to print after the value), or None when it is fine."""
    if not math.isfinite(value):
        return NOT_FINITE_RATING
    if value < 0:
        return NEGATIVE_RATING
    if not allow_fractional and not float(value).is_integer():
        return FRACTIONAL_RATING
    return None


def first_bad_rating(ratings: np.ndarray, allow_fractional: bool = False) -> tuple[int, str] | None:
    """(position, reason) of the first rating breaking the rules, or None. Vectorised: ML-1M has 1M ratings."""
    r = np.asarray(ratings, dtype=np.float64)
    finite = np.isfinite(r)
    bad = ~finite | (r < 0)  # comparisons with NaN are False and do not warn
    if not allow_fractional:
        bad |= finite & (np.floor(r) != r)  # floor, not `% 1`: no invalid-value warning on inf
    k = first_true(bad)
    if k is None:
        return None
    reason = rating_problem(float(r[k]), allow_fractional)
    assert reason is not None
    return k, reason


def timestamp_problem(value: object) -> str | None:
    """Why one timestamp sent to the service is not acceptable, or None when it is: it must be an integer (a
    Python or NumPy int, not a bool, not a float) and non-negative, unix seconds. The message is complete, e.g.
    'timestamps must be non-negative integers (unix seconds), got -5'; prefix it with where it was found."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        shown = int(value) if isinstance(value, np.integer) else value  # -5, not np.int64(-5)
        return f"{REQUEST_TIMESTAMP_RULE}, got {shown!r}"
    return None


def check_timestamp(value: object) -> int:
    """``value`` as an int when it is an acceptable request timestamp (see ``timestamp_problem``); else
    ValueError with the message."""
    problem = timestamp_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return int(value)  # type: ignore[call-overload]  # an int or np.integer here
