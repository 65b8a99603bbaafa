"""A deployment node's own data file, aligned to the federation's shared item catalogue.

In a real deployment each SuperNode reads only its own file (``node_config`` ``data-path``):
a CSV or Parquet table with columns ``user`` and ``item`` and, optionally, ``rating`` (ratings
≥ 4 are positives; without it every row is). All nodes must share one public item catalogue
(``catalogue-path``: a text file with one item id per line), so that their models have the same
item space. Items outside the catalogue are dropped and counted in the cleaning report.
The node then splits its own users (strong generalization) into training and held-out users.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsynth.common.config.sections import DataConfig, PreprocessConfig, SplitConfig
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.loaders import load_table
from fedsynth.common.data.preprocess import preprocess
from fedsynth.common.data.split import Split, split_users_by_id
from fedsynth.common.errors import ConfigError, DataFormatError


def read_catalogue(path: Path) -> np.ndarray:
    """Item ids, one per line (blank lines ignored; duplicates are an error)."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except OSError as exc:
        raise ConfigError(f"catalogue-path {path}: cannot read it ({exc.strerror}).") from exc
    ids = [line for line in lines if line]
    if not ids:
        raise DataFormatError(f"{path}: the item catalogue is empty; it needs one item id per line.")
    duplicated = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(duplicated):
        raise DataFormatError(f"{path}: item id {duplicated.iloc[0]!r} appears twice in the catalogue.")
    return np.asarray(ids, dtype=object)


def _columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (OSError, pd.errors.EmptyDataError) as exc:
        raise DataFormatError(f"{path}: cannot read a CSV header ({exc}).") from exc


def load_node_file(data_path: Path, catalogue: np.ndarray, preprocess_config: PreprocessConfig) -> Interactions:
    """This node's interactions as binary CSR over ``catalogue`` (column j = catalogue[j])."""
    if not data_path.is_file():
        raise ConfigError(f"node config data-path {data_path}: no such file on this node.")
    columns = _columns(data_path)
    missing = [c for c in ("user", "item") if c not in columns]
    if missing:
        raise DataFormatError(f"{data_path}: missing column(s) {', '.join(missing)}; need user, item[, rating].")
    table = load_table(
        DataConfig(
            dataset="parquet" if data_path.suffix == ".parquet" else "csv",
            data_path=data_path,
            user_col="user",
            item_col="item",
            rating_col="rating" if "rating" in columns else None,
        )
    )
    local = preprocess(table, preprocess_config)
    position = {str(item): j for j, item in enumerate(catalogue)}
    local_to_global = np.asarray([position.get(str(item), -1) for item in local.item_ids])
    coo = local.matrix.tocoo()
    known = local_to_global[coo.col] >= 0
    if not known.all():
        local.report.warn(
            f"{int((~known).sum()):,} interaction(s) with {int((local_to_global < 0).sum()):,} item(s) outside the "
            "shared catalogue were dropped."
        )
    matrix = sp.csr_matrix(
        (coo.data[known], (coo.row[known], local_to_global[coo.col[known]])), shape=(local.num_users, len(catalogue))
    )
    return Interactions(matrix, local.user_ids, catalogue, local.report, local.user_attributes)


def split_node_file(data_path: Path, catalogue_path: Path, seed: int) -> tuple[Interactions, Split]:
    """Load, align and split one node's file (each user's side by a keyed hash of their own id: stable when
    other users are added or removed, :func:`split_users_by_id`)."""
    interactions = load_node_file(data_path, read_catalogue(catalogue_path), PreprocessConfig())
    return interactions, split_users_by_id(interactions, SplitConfig(seed=seed))
