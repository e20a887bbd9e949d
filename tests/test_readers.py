"""Readers on the real shared files and on malformed files, with the exact error."""

import zipfile

import numpy as np
import pytest

from t2diff.data import kuairand, movielens
from t2diff.data.errors import DataError
from t2diff.data.generic import ColumnSpec, read_interactions
from t2diff.data.sources import SourceSpec, load_source

# ---- real files -----------------------------------------------------------------------------------------


def test_ml1m_ratings_real(ml1m_dir):
    inter = movielens.read_ratings(ml1m_dir / "ratings.users-1-2999.dat")
    assert len(inter) == 487_650
    assert len(np.unique(inter.users)) == 2999
    assert inter.users[0] == 1 and inter.items[0] == 1193 and inter.times[0] == 978300760
    assert set(np.unique(inter.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_ml1m_movies_and_users_real(ml1m_dir):
    movies = movielens.read_movies(ml1m_dir / "movies.dat")
    assert len(movies) == 3883
    assert movies["1"] == ["genre=Animation", "genre=Children's", "genre=Comedy"]
    users = movielens.read_users(ml1m_dir / "users.dat")
    assert len(users) == 6040 and users["1"]["Gender"] == "F"


def test_ml1m_sequences_real(ml1m_dir):
    inter = read_interactions(ml1m_dir / "sequences.tsv", ColumnSpec(user="user_id", item="movie_id",
                                                                     order="seq_index"))
    assert len(inter) == 1_000_209 and inter.times is None
    assert inter.users.dtype == np.int64


def test_named_ml1m_falls_back_to_sequences(ml1m_dir):
    inter = load_source(SourceSpec(dataset="ml-1m", data_dir=str(ml1m_dir.parent)))
    assert len(inter) == 1_000_209 and inter.order is not None
    assert inter.item_features is not None


def test_ml1m_zip(tmp_path, ml1m_dir):
    src = (ml1m_dir / "ratings.users-1-2999.dat").read_bytes()[:10_000]
    src = src[: src.rindex(b"\n") + 1]
    z = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", src)
    inter = movielens.read_ratings(z)
    assert len(inter) == src.count(b"\n")


def test_kuairand_real(kuairand_dir):
    logs = sorted(kuairand_dir.glob("log_standard_*.csv"))
    inter = kuairand.read_logs(logs)
    assert len(inter) > 0 and inter.times is not None
    unfiltered = kuairand.read_logs(logs, filters=[])
    assert len(unfiltered) == 228_329
    feats = kuairand.read_video_features(next(kuairand_dir.glob("video_features_basic_*.csv")))
    assert any(t.startswith("tag=") for t in feats["0"])


# ---- malformed files ------------------------------------------------------------------------------------


def test_ratings_wrong_field_count(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::2::5::978300760\n1::3::5\n")
    with pytest.raises(DataError) as e:
        movielens.read_ratings(p)
    assert str(e.value) == (f"{p} line 2: expected 4 fields separated by '::' "
                            "(UserID::MovieID::Rating::Timestamp), got 3: '1::3::5'")


def test_ratings_non_integer_id(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::2::5::978300760\n1::abc::5::978300761\n")
    with pytest.raises(DataError) as e:
        movielens.read_ratings(p)
    assert str(e.value) == f"{p} line 2, field MovieID: 'abc' is not an integer"


def test_ratings_empty_file(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("")
    with pytest.raises(DataError, match=r"ratings.dat: file is empty$"):
        movielens.read_ratings(p)


def test_ratings_bad_encoding(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_bytes(b"1::2::5::978300760\n1::\xff3::5::978300761\n")
    with pytest.raises(DataError) as e:
        movielens.read_ratings(p)
    assert str(e.value).startswith(f"{p} line 2: byte 0xff is not valid utf-8")


def test_movies_latin1_default_and_wrong_fields(tmp_path):
    p = tmp_path / "movies.dat"
    p.write_bytes("1::Am\xe9lie (2001)::Comedy|Romance\n".encode("latin-1"))
    assert movielens.read_movies(p) == {"1": ["genre=Comedy", "genre=Romance"]}
    p.write_text("1::Toy Story (1995)\n")
    with pytest.raises(DataError, match=r"line 1: expected 3 fields"):
        movielens.read_movies(p)


def test_generic_missing_column(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("uid,iid\n1,2\n")
    with pytest.raises(DataError) as e:
        read_interactions(p, ColumnSpec(user="user_id", item="iid"))
    assert str(e.value) == f"{p}: column(s) ['user_id'] not found; the file's columns are ['uid', 'iid']"


def test_generic_wrong_field_count(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,ts\n1,2,3\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"log.csv: wrong number of fields: Expected 3 fields in line 3, saw 4"):
        read_interactions(p, ColumnSpec(time="ts"))


def test_generic_too_few_fields(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,ts\n1,2,3\n1,2\n")
    with pytest.raises(DataError) as e:
        read_interactions(p, ColumnSpec(time="ts"))
    assert str(e.value) == f"{p} line 3, field ts: value is missing: too few fields (the line has 2, the header 3)"


def test_generic_non_integer_timestamp_and_order(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,pos\n1,2,0\n1,3,x\n")
    with pytest.raises(DataError) as e:
        read_interactions(p, ColumnSpec(order="pos"))
    assert str(e.value) == f"{p} line 3, field pos: 'x' is not an integer"


def test_generic_empty_and_header_only(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("")
    with pytest.raises(DataError, match="log.csv: file is empty"):
        read_interactions(p, ColumnSpec())
    p.write_text("user_id,item_id\n")
    with pytest.raises(DataError, match="has a header but no data rows"):
        read_interactions(p, ColumnSpec())


def test_generic_bad_encoding(tmp_path):
    p = tmp_path / "log.tsv"
    p.write_bytes(b"user_id\titem_id\nu1\ti1\nu\xe92\ti2\n")
    with pytest.raises(DataError) as e:
        read_interactions(p, ColumnSpec())
    assert str(e.value).startswith(f"{p} line 3: byte 0xe9 is not valid utf-8")
    inter = read_interactions(p, ColumnSpec(), encoding="latin-1")
    assert list(inter.users) == ["u1", "u\xe92"]


def test_generic_string_ids_datetime_and_parquet(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"who": ["007", "a", "a"], "what": ["x", "y", "x"],
                       "when": ["2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z", "2024-01-01T00:00:02Z"]})
    p = tmp_path / "log.parquet"
    df.to_parquet(p)
    inter = read_interactions(p, ColumnSpec(user="who", item="what", time="when"))
    assert list(inter.users) == ["007", "a", "a"]  # '007' stays a string, never the integer 7
    assert inter.times.tolist() == [1704067200, 1704067201, 1704067202]


def test_kuairand_bad_filter(tmp_path):
    with pytest.raises(DataError, match="filter 'tab=1' is not of the form column==integer"):
        kuairand.parse_filter("tab=1")


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as e:
        load_source(SourceSpec(dataset="ml-1m", data_dir=str(tmp_path)))
    msg = str(e.value)
    assert "looked for" in msg and str(tmp_path) in msg and "grouplens.org" in msg
