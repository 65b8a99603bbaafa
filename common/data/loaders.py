"""Loaders for the supported sources, and :func:`load_table` that picks one from a DataConfig.

Each loader returns an :class:`InteractionTable`; nothing here builds a dense matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.config.sections import DataConfig
from fedsynth.common.data.delimited import ColumnSpec, load_delimited, load_parquet, read_delimited_text, require_file
from fedsynth.common.data.table import Feedback, InteractionTable
from fedsynth.common.errors import DataFormatError

# File name → (separator, header names or None for a header line, column spec), most recent formats first.
_MOVIELENS_FORMATS: dict[str, tuple[str, list[str] | None, ColumnSpec]] = {
    "ratings.csv": (",", None, ColumnSpec("userId", "movieId", "rating", "timestamp")),  # latest, 20M, 25M, 32M
    "ratings.dat": ("::", ["user", "item", "rating", "timestamp"], ColumnSpec("user", "item", "rating", "timestamp")),
    "u.data": ("\t", ["user", "item", "rating", "timestamp"], ColumnSpec("user", "item", "rating", "timestamp")),
}
_MOVIELENS_VARIANT_BY_FILE = {"ratings.csv": "latest/20M/25M/32M", "ratings.dat": "1M/10M", "u.data": "100K"}
# ML-1M's age codes, also used to group ML-100K's exact ages.
_AGE_GROUP_EDGES = [18, 25, 35, 45, 50, 56]


def find_movielens_file(data_path: Path) -> Path:
    """The ratings file inside a MovieLens directory (or ``data_path`` itself if it is one)."""
    if data_path.is_file():
        if data_path.name not in _MOVIELENS_FORMATS:
            raise DataFormatError(
                f"not a MovieLens ratings file; expected one of {', '.join(_MOVIELENS_FORMATS)}. "
                "For another layout use --dataset csv with --user-col/--item-col.",
                data_path,
            )
        return data_path
    if not data_path.is_dir():
        raise DataFormatError(
            "MovieLens directory not found. Pass --data-path DIR or --variant to download.", data_path
        )
    for name in _MOVIELENS_FORMATS:
        candidate = data_path / name
        if candidate.is_file():
            return candidate
    raise DataFormatError(
        f"no MovieLens ratings file here; expected one of {', '.join(_MOVIELENS_FORMATS)} "
        "(latest/20M/25M/32M, 1M/10M, 100K). Point --data-path at the unpacked folder.",
        data_path,
    )


def load_movielens(data_path: Path, bad_rows: str = "error") -> InteractionTable:
    """Load MovieLens 100K (``u.data``), 1M/10M (``ratings.dat``) or latest/20M/25M/32M (``ratings.csv``).

    User attributes are attached where the release has them (100K ``u.user``, 1M ``users.dat``):
    ``gender``, ``age_group``, ``occupation``, ``zip_prefix``.
    """
    path = find_movielens_file(data_path)
    separator, names, spec = _MOVIELENS_FORMATS[path.name]
    table = load_delimited(
        path,
        spec,
        separator,
        feedback="rating",
        bad_rows=bad_rows,  # type: ignore[arg-type]
        source=f"MovieLens {_MOVIELENS_VARIANT_BY_FILE[path.name]} ({path})",
        names=names,
    )
    attributes = _movielens_user_attributes(path.parent)
    if attributes is None:
        return table
    return InteractionTable(table.frame, table.feedback, table.report, attributes)


def _movielens_user_attributes(directory: Path) -> pd.DataFrame | None:
    if (directory / "u.user").is_file():
        names = ["user", "age", "gender", "occupation", "zip"]
        frame = read_delimited_text(directory / "u.user", "|", names)
        age = pd.to_numeric(frame["age"], errors="coerce")
        frame["age_group"] = np.digitize(age.fillna(0).to_numpy(), _AGE_GROUP_EDGES).astype(str)
    elif (directory / "users.dat").is_file():
        names = ["user", "gender", "age_group", "occupation", "zip"]
        frame = read_delimited_text(directory / "users.dat", "::", names)
    else:
        return None
    frame["zip_prefix"] = frame["zip"].astype(str).str.strip().str[:1]
    frame["user"] = pd.to_numeric(frame["user"], errors="coerce")
    frame = frame.dropna(subset=["user"]).astype({"user": np.int64})
    return frame.set_index("user")[["gender", "age_group", "occupation", "zip_prefix"]]


def load_lastfm(data_path: Path, bad_rows: str = "error") -> InteractionTable:
    """Load HetRec 2011 Last.fm ``user_artists.dat`` (tab-separated, header, CRLF allowed); value = play count."""
    path = data_path / "user_artists.dat" if data_path.is_dir() else data_path
    require_file(path, "Last.fm user_artists.dat", "Point --data-path at the unpacked hetrec2011-lastfm-2k folder.")
    return load_delimited(
        path,
        ColumnSpec("userID", "artistID", "weight", None),
        "\t",
        feedback="count",
        bad_rows=bad_rows,  # type: ignore[arg-type]
        source=f"Last.fm HetRec 2011 ({path})",
    )


def load_generic(config: DataConfig) -> InteractionTable:
    """Load a generic CSV (header line) or Parquet file with the configured column names."""
    assert config.data_path is not None and config.user_col and config.item_col
    path = require_file(config.data_path, f"{config.dataset} file", "Check --data-path.")
    spec = ColumnSpec(config.user_col, config.item_col, config.rating_col, config.time_col, numeric_ids=False)
    feedback: Feedback = "rating" if config.rating_col else "implicit"
    if config.dataset == "parquet":
        return load_parquet(path, spec, feedback, config.bad_rows, config.attribute_cols)
    return load_delimited(
        path,
        spec,
        config.separator,
        feedback=feedback,
        bad_rows=config.bad_rows,
        source=f"csv {path}",
        attribute_columns=config.attribute_cols,
    )


def load_table(config: DataConfig) -> InteractionTable:
    """Load the source named by ``config`` (downloading a MovieLens variant first if asked)."""
    if config.dataset == "generated":
        from fedsynth.common.data.generated import generate_table

        return generate_table(config.generated)
    if config.dataset == "movielens":
        if config.variant is not None:
            from fedsynth.common.data.download import fetch_movielens

            return load_movielens(fetch_movielens(config.variant, config.cache_dir, config.mirror), config.bad_rows)
        assert config.data_path is not None
        return load_movielens(config.data_path, config.bad_rows)
    if config.dataset == "lastfm":
        assert config.data_path is not None
        return load_lastfm(config.data_path, config.bad_rows)
    return load_generic(config)
