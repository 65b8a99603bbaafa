"""Loaders: every supported format, and clear errors naming file and line for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.config.sections import DataConfig
from fedsynth.common.data.loaders import find_movielens_file, load_lastfm, load_movielens, load_table
from fedsynth.common.errors import ConfigError, DataFormatError
from tests.conftest import write


def test_movielens_100k_u_data_with_user_attributes(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n")
    write(tmp_path / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")

    table = load_movielens(tmp_path)

    assert table.frame["user"].tolist() == [1, 1, 2]
    assert table.frame["value"].tolist() == [5.0, 3.0, 4.0]
    assert table.frame["timestamp"].iloc[0] == 881250949
    assert table.feedback == "rating"
    assert table.user_attributes is not None
    assert table.user_attributes.loc[2, "gender"] == "F"
    assert table.user_attributes.loc[1, "zip_prefix"] == "8"
    assert table.user_attributes.loc[1, "age_group"] != table.user_attributes.loc[2, "age_group"]


def test_movielens_1m_double_colon_separator(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n6040::1::4::956703977\n")
    write(tmp_path / "users.dat", "1::F::1::10::48067\n6040::M::25::6::11106\n")

    table = load_movielens(tmp_path)

    assert table.frame["item"].tolist() == [1193, 661, 1]
    assert table.user_attributes is not None and table.user_attributes.loc[6040, "age_group"] == "25"


def test_movielens_latest_csv_with_header_is_preferred(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n2,3,0.5,964981247\n")
    write(tmp_path / "u.data", "9\t9\t1\t1\n")

    assert find_movielens_file(tmp_path).name == "ratings.csv"
    table = load_movielens(tmp_path)
    assert table.frame["value"].tolist() == [4.5, 0.5]


def test_movielens_folder_without_ratings_file_names_expected_files(tmp_path: Path) -> None:
    write(tmp_path / "movies.csv", "movieId,title\n")

    with pytest.raises(DataFormatError, match=r"ratings.csv, ratings.dat, u.data"):
        load_movielens(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        load_movielens(tmp_path / "nowhere")
    with pytest.raises(DataFormatError, match=r"user_artists.dat not found"):
        load_lastfm(tmp_path)


def test_lastfm_crlf_play_counts(tmp_path: Path) -> None:
    write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t0\n", "\r\n")

    table = load_lastfm(tmp_path)

    assert table.feedback == "count"
    assert table.frame["value"].tolist() == [13883.0, 11690.0, 0.0]
    assert table.frame["item"].dtype == np.int64
    assert np.isnan(table.frame["timestamp"]).all()


def test_non_numeric_rating_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,abc,2\n1,3,5.0,3\n")

    with pytest.raises(DataFormatError) as error:
        load_movielens(tmp_path)

    assert error.value.line == 3
    assert str(path) in str(error.value)
    assert "rating ('rating') is not a number" in str(error.value)
    assert "--bad-rows skip" in str(error.value)


def test_non_numeric_id_is_an_error_for_movielens(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t10\t5\t1\nx7\t10\t5\t1\n")

    with pytest.raises(DataFormatError, match=r"line 2: user id \('user'\) is not an integer"):
        load_movielens(tmp_path)


def test_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,3.0,2,extra\n")

    with pytest.raises(DataFormatError) as error:
        load_movielens(tmp_path)

    assert error.value.line == 3
    assert "expected 4 fields" in str(error.value)


def test_wrong_separator_is_diagnosed(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "user;item;stars\nu1;i1;5\n")

    with pytest.raises(DataFormatError, match=r"probably not separated by ','"):
        load_table(DataConfig(dataset="csv", data_path=path, user_col="user", item_col="item", rating_col="stars"))


def test_column_option_naming_a_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "user,item,stars\nu1,i1,5\n")

    with pytest.raises(
        DataFormatError,
        match=r"column 'rating' \(--rating-col\) does not exist; the columns are 'user', 'item', 'stars'",
    ):
        load_table(DataConfig(dataset="csv", data_path=path, user_col="user", item_col="item", rating_col="rating"))


def test_missing_fields_are_errors_or_counted_when_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "user,item,stars\nu1,i1,5\nu2,,4\nu3,i3,\nu4,i4,2\n")
    config = dict(dataset="csv", data_path=path, user_col="user", item_col="item", rating_col="stars")

    with pytest.raises(DataFormatError, match=r"line 3: missing item id"):
        load_table(DataConfig(**config))  # type: ignore[arg-type]
    table = load_table(DataConfig(**config, bad_rows="skip"))  # type: ignore[arg-type]

    assert table.frame["user"].tolist() == ["u1", "u4"]
    step = next(s for s in table.report.steps if s.name == "invalid rows")
    assert step.removed == 2
    assert "lines 3, 4" in step.note
    assert table.report.warnings


def test_generic_csv_keeps_text_ids_and_user_attributes(tmp_path: Path) -> None:
    path = write(tmp_path / "e.tsv", "uid\tsku\tts\tcountry\nalice\tA-1\t5\tfr\nbob\tA-1\t6\tde\nalice\tB-2\t7\tfr\n")

    table = load_table(
        DataConfig(
            dataset="csv",
            data_path=path,
            user_col="uid",
            item_col="sku",
            time_col="ts",
            separator="\t",
            attribute_cols=("country",),
        )
    )

    assert table.feedback == "implicit"
    assert table.frame["item"].tolist() == ["A-1", "A-1", "B-2"]
    assert table.frame["value"].tolist() == [1.0, 1.0, 1.0]
    assert table.user_attributes is not None and table.user_attributes.loc["bob", "country"] == "de"


def test_parquet_file_and_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame({"u": [1, 2, 3], "i": [10, 11, 12], "r": ["5", "x", "4"]}).to_parquet(path)
    config = dict(dataset="parquet", data_path=path, user_col="u", item_col="i", rating_col="r")

    with pytest.raises(DataFormatError, match=r"rows 2"):
        load_table(DataConfig(**config))  # type: ignore[arg-type]
    table = load_table(DataConfig(**config, bad_rows="skip"))  # type: ignore[arg-type]
    assert table.frame["value"].tolist() == [5.0, 4.0]


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.parquet", "hello")

    with pytest.raises(DataFormatError, match="cannot read as Parquet"):
        load_table(DataConfig(dataset="parquet", data_path=path, user_col="u", item_col="i"))


def test_empty_file(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "")

    with pytest.raises(DataFormatError, match="empty"):
        load_movielens(tmp_path)


def test_config_rejects_incomplete_source_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--user-col and --item-col"):
        DataConfig(dataset="csv", data_path=tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="--data-path"):
        DataConfig(dataset="movielens")
    with pytest.raises(ConfigError, match="--variant"):
        DataConfig(dataset="lastfm", variant="1m", data_path=tmp_path)
