"""Deployment: a node reads only its own file, aligned to the shared catalogue; missing pieces are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsynth.client.data import node_data
from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError, DataFormatError


def write_node(tmp_path: Path, users: int, seed: int, extra_item: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{i}", 5.0) for u in range(users) for i in rng.choice(30, size=8, replace=False)]
    if extra_item:
        rows.append(("u0", "not-in-catalogue", 5.0))
    path = tmp_path / f"node-{seed}.csv"
    path.write_text("user,item,rating\n" + "\n".join(f"{u},{i},{r}" for u, i, r in rows) + "\n")
    return path


def test_nodes_share_the_catalogue_item_space(tmp_path: Path) -> None:
    catalogue = tmp_path / "items.txt"
    catalogue.write_text("\n".join(f"i{i}" for i in range(40)) + "\n")
    config = RunConfig()

    first = node_data({"data-path": str(write_node(tmp_path, 50, 1)), "catalogue-path": str(catalogue)}, config)
    second = node_data(
        {"data-path": str(write_node(tmp_path, 30, 2, extra_item=True)), "catalogue-path": str(catalogue)}, config
    )

    assert first.train.shape[1] == second.train.shape[1] == 40
    assert list(first.item_ids) == [f"i{i}" for i in range(40)]
    assert first.train.shape[0] + len(first.test) <= 50 and len(first.test) > 0
    assert first.train[:, 30:].nnz == 0  # items i30..i39 nobody has
    assert second.train.sum() + second.test.fold_in.sum() + second.test.target.sum() <= 30 * 8


def test_missing_catalogue_file_or_columns_are_named(tmp_path: Path) -> None:
    data = write_node(tmp_path, 20, 3)
    with pytest.raises(ConfigError, match="catalogue-path"):
        node_data({"data-path": str(data)}, RunConfig())
    with pytest.raises(ConfigError, match="no such file"):
        node_data({"data-path": str(tmp_path / "nope.csv"), "catalogue-path": str(data)}, RunConfig())
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,item\n1,2\n")
    catalogue = tmp_path / "items.txt"
    catalogue.write_text("2\n")
    with pytest.raises(DataFormatError, match="missing column"):
        node_data({"data-path": str(bad), "catalogue-path": str(catalogue)}, RunConfig())
    with pytest.raises(ConfigError, match="neither data-path"):
        node_data({}, RunConfig())
