"""Value rules (t2diff.data.values) in every reader: negative timestamps, bad ratings, the blamed line and value."""

import json

import numpy as np
import pandas as pd
import pytest

from t2diff.data import kuairand, movielens
from t2diff.data.errors import DataError
from t2diff.data.generic import ColumnSpec, read_interactions
from t2diff.data.values import check_timestamp, first_bad_rating, rating_problem, timestamp_problem

NEG_TIME = "is negative (timestamps are non-negative unix times)"
NOT_FINITE = "is not a finite number (ratings are finite, non-negative numbers)"
NEG_RATING = "is negative (ratings are non-negative)"
FRACTIONAL = ("is not a whole number (ratings are whole stars unless --allow-fractional-ratings is passed, "
              "e.g. for MovieLens 10M's half stars)")


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# ---- ML-1M ratings.dat ----------------------------------------------------------------------------------


def test_ml1m_negative_timestamp(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::2::5::978300760\n\n1::3::4::-5\n")  # the blank line counts: the bad value is on line 3
    assert _error(movielens.read_ratings, p) == f"{p} line 3, field Timestamp: '-5' {NEG_TIME}"


@pytest.mark.parametrize(("rating", "reason"), [("nan", NOT_FINITE), ("inf", NOT_FINITE), ("-1", NEG_RATING),
                                                ("3.5", FRACTIONAL)])
def test_ml1m_bad_rating(tmp_path, rating, reason):
    p = tmp_path / "ratings.dat"
    p.write_text(f"1::2::5::978300760\n1::3::{rating}::978300761\n")
    assert _error(movielens.read_ratings, p) == f"{p} line 2, field Rating: {rating!r} {reason}"


def test_ml1m_fractional_ratings_when_allowed(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::2::4.5::978300760\n1::3::0.5::978300761\n")  # MovieLens 10M's half stars
    assert movielens.read_ratings(p, allow_fractional_ratings=True).ratings.tolist() == [4.5, 0.5]
    p.write_text("1::2::4.5::978300760\n1::3::nan::978300761\n")  # the other rules still hold
    assert (_error(movielens.read_ratings, p, allow_fractional_ratings=True)
            == f"{p} line 2, field Rating: 'nan' {NOT_FINITE}")


# ---- KuaiRand logs --------------------------------------------------------------------------------------


def test_kuairand_negative_time_ms(tmp_path):
    p = tmp_path / "log_standard_x.csv"
    # on a row the default filters drop (is_click 0): a negative time still means a broken file
    p.write_text("user_id,video_id,time_ms,tab,is_click\n1,2,1650000000000,1,1\n1,3,-1000,1,0\n")
    assert _error(kuairand.read_logs, [p]) == f"{p} line 3, field time_ms: '-1000' {NEG_TIME}"


def test_kuairand_empty_id(tmp_path):
    p = tmp_path / "log_standard_x.csv"
    p.write_text("user_id,video_id,time_ms,tab,is_click\n1,,1650000000000,1,1\n")
    assert _error(kuairand.read_logs, [p]) == f"{p} line 2, field video_id: value is empty"


# ---- generic CSV / Parquet: timestamps --------------------------------------------------------------------


def _csv(tmp_path, text: str, name: str = "log.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_generic_negative_numeric_time(tmp_path):
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,10\n1,3,-5\n")
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == f"{p} line 3, field ts: '-5' {NEG_TIME}"
    # checked before the unit is applied: -1 ms is not rounded to a valid time
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,10\n1,3,-1\n")
    assert (_error(read_interactions, p, ColumnSpec(time="ts", time_unit="ms"))
            == f"{p} line 3, field ts: '-1' {NEG_TIME}")


def test_generic_fractional_unix_time(tmp_path):
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,10\n1,3,10.5\n")
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == f"{p} line 3, field ts: '10.5' is not an integer"


def test_generic_datetime_before_1970(tmp_path):
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,2024-01-01T00:00:00Z\n1,3,1969-12-31T23:59:59Z\n")
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == (
        f"{p} line 3, field ts: '1969-12-31T23:59:59Z' is before 1970-01-01 UTC (timestamps are non-negative "
        "unix times)")


@pytest.mark.filterwarnings("error")  # pandas' "Could not infer format" warning must not leak
def test_generic_non_number_in_numeric_time_column(tmp_path):
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,10\n1,3,abc\n")
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == (
        f"{p} line 3, field ts: 'abc' is not a number (the column's first value is one, so it holds unix times "
        "in s)")


@pytest.mark.filterwarnings("error")
def test_generic_bad_datetime_blamed_at_its_line(tmp_path):
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,2024-01-01T00:00:00Z\n1,3,2024-01-02T00:00:00Z\n1,4,nope\n")
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == (
        f"{p} line 4, field ts: 'nope' is not a date-time in the column's format (ISO8601, from its first value)")
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,nope\n1,3,2024-01-02T00:00:00Z\n")
    assert (_error(read_interactions, p, ColumnSpec(time="ts"))
            == f"{p} line 2, field ts: 'nope' is neither a number nor a date-time")


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("first", "second", "expected"), [
    ("2024-01-01 00:00:00", "2024-01-01T01:00:00+01:00", [1704067200, 1704067200]),  # ISO 8601, offsets
    ("01/02/2024", "12/31/2024", [1704153600, 1735603200]),  # a guessed format, used for every value
    ("Jan 1st 2024 00:00", "Jan 1st 2024 00:01", [1704067200, 1704067260]),  # pandas' guess of an odd format
    ("1/1/24 10am", "1/2/24 10am", [1704103200, 1704189600]),  # no format guessed: dateutil, value by value
])
def test_generic_datetime_formats_parse_without_warnings(tmp_path, first, second, expected):
    p = _csv(tmp_path, f"user_id,item_id,ts\n1,2,{first}\n1,3,{second}\n")
    assert read_interactions(p, ColumnSpec(time="ts")).times.tolist() == expected


# ---- generic: the real line, and what is wrong with a missing value -----------------------------------------


def test_generic_line_counts_blank_lines(tmp_path):
    # blank and whitespace-only lines (which pandas skips), before the header too, and CRLF endings
    p = _csv(tmp_path, "\nuser_id,item_id,pos\r\n1,2,0\r\n\r\n   \r\n1,3,x\r\n")
    assert _error(read_interactions, p, ColumnSpec(order="pos")) == f"{p} line 6, field pos: 'x' is not an integer"


def test_generic_line_follows_quoted_multiline_field(tmp_path):
    p = _csv(tmp_path, 'user_id,item_id,pos\n"a\n\nb",2,0\n1,3,x\n')
    assert _error(read_interactions, p, ColumnSpec(order="pos")) == f"{p} line 5, field pos: 'x' is not an integer"


def test_generic_tsv_line_with_only_separators_is_a_row(tmp_path):
    p = _csv(tmp_path, "user_id\titem_id\n1\t2\n\t\n", name="log.tsv")  # pandas keeps it: empty values
    assert _error(read_interactions, p, ColumnSpec()) == f"{p} line 3, field user_id: value is empty"


def test_generic_empty_field_is_not_too_few_fields(tmp_path):
    p = _csv(tmp_path, "user_id,item_id,ts\nu1,,10\n")
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == f"{p} line 2, field item_id: value is empty"


def test_generic_na_markers_are_values(tmp_path):
    # only an empty field is missing: 'NA' is an id as written, 'null' a time that is not a number
    p = _csv(tmp_path, "user_id,item_id\nNA,null\n")
    inter = read_interactions(p, ColumnSpec())
    assert inter.users.tolist() == ["NA"] and inter.items.tolist() == ["null"]
    p = _csv(tmp_path, "user_id,item_id,ts\n1,2,10\n1,3,null\n")
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == (
        f"{p} line 3, field ts: 'null' is not a number (the column's first value is one, so it holds unix times "
        "in s)")


def test_generic_parquet_names_the_row(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "ts": [5, 6, -7]}).to_parquet(p)
    assert _error(read_interactions, p, ColumnSpec(time="ts")) == f"{p} row 3, field ts: -7 {NEG_TIME}"
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"],
                  "when": pd.to_datetime(["2024-01-01", "1960-01-01"])}).to_parquet(p)
    assert _error(read_interactions, p, ColumnSpec(time="when")) == (
        f"{p} row 2, field when: '1960-01-01T00:00:00' is before 1970-01-01 UTC (timestamps are non-negative unix "
        "times)")


# ---- generic: ratings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rating", "reason"), [("nan", NOT_FINITE), ("-inf", NOT_FINITE), ("-2", NEG_RATING),
                                                ("3.5", FRACTIONAL), ("abc", "is not a number")])
def test_generic_bad_rating(tmp_path, rating, reason):
    p = _csv(tmp_path, f"user_id,item_id,stars\n1,2,4\n\n1,3,{rating}\n")
    assert _error(read_interactions, p, ColumnSpec(rating="stars")) == f"{p} line 4, field stars: {rating!r} {reason}"


def test_generic_fractional_ratings_when_allowed(tmp_path):
    p = _csv(tmp_path, "user_id,item_id,stars\n1,2,4\n1,3,3.5\n")
    inter = read_interactions(p, ColumnSpec(rating="stars"), allow_fractional_ratings=True)
    assert inter.ratings.tolist() == [4.0, 3.5]
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "stars": [4.5, np.nan]}).to_parquet(p)
    assert (_error(read_interactions, p, ColumnSpec(rating="stars"), allow_fractional_ratings=True)
            == f"{p} row 2, field stars: value is missing")


def test_cli_allow_fractional_ratings(tmp_path, capsys, monkeypatch):
    from t2diff.cli import main

    monkeypatch.delenv("T2DIFF_DATA_DIR", raising=False)  # read only the file given
    p = tmp_path / "ratings.dat"  # the ML-1M format with MovieLens 10M's half stars
    p.write_text("".join(f"1::{k}::{k % 5 + 0.5}::97830076{k}\n" for k in range(1, 6)))
    args = ["prepare", "ml-1m", "--input", str(p), "--out", str(tmp_path / "o"), "--no-features"]
    assert main(args) == 2
    assert f"{p} line 1, field Rating: '1.5' {FRACTIONAL}" in capsys.readouterr().err
    assert main([*args, "--allow-fractional-ratings"]) == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["reader"] == {"allow_fractional_ratings": True} and meta["num_interactions"] == 5


# ---- the shared rules themselves ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-5, np.int64(-5), True, 1.5, "5", None])
def test_request_timestamp_rejected(value):
    shown = -5 if isinstance(value, np.integer) else value  # np.int64(-5) is shown as -5
    msg = f"timestamps must be non-negative integers (unix seconds), got {shown!r}"
    assert timestamp_problem(value) == msg
    with pytest.raises(ValueError) as e:
        check_timestamp(value)
    assert str(e.value) == msg


@pytest.mark.parametrize("value", [0, 1_700_000_000, np.int64(7)])
def test_request_timestamp_accepted(value):
    assert timestamp_problem(value) is None
    assert check_timestamp(value) == int(value) and type(check_timestamp(value)) is int


def test_rating_rules():
    assert first_bad_rating(np.array([1.0, 5.0, 0.0])) is None
    assert first_bad_rating(np.array([1.0, 2.5, -1.0])) == (1, FRACTIONAL)
    assert first_bad_rating(np.array([1.0, 2.5, -1.0]), allow_fractional=True) == (2, NEG_RATING)
    assert first_bad_rating(np.array([np.inf])) == (0, NOT_FINITE)
    assert rating_problem(4.5, allow_fractional=True) is None and rating_problem(float("nan")) == NOT_FINITE
