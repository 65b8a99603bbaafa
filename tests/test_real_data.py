"""Real data from ../shared/data (skipped where absent): loaders and the baseline sanity bar."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsynth.common.config.sections import DataConfig, EvalConfig, PreprocessConfig
from fedsynth.common.data.loaders import load_lastfm, load_movielens
from fedsynth.common.data.prepare import DataSettings
from fedsynth.common.data.preprocess import preprocess
from fedsynth.simulations.experiments.upper_bounds import UpperBoundConfig, run_baseline


def test_movielens_latest_small_loads_every_row(real_data_dir: Path) -> None:
    table = load_movielens(real_data_dir / "ml-latest-small")

    assert len(table.frame) == 100_836
    assert table.frame["user"].nunique() == 610
    data = preprocess(table, PreprocessConfig())
    assert (data.num_users, data.num_items) == (603, 6298)


def test_lastfm_loads_every_row(real_data_dir: Path) -> None:
    table = load_lastfm(real_data_dir / "lastfm-2k")

    assert len(table.frame) == 92_834
    assert table.frame["user"].nunique() == 1892
    assert table.frame["item"].nunique() == 17_632


@pytest.mark.slow
def test_baseline_sanity_bar_on_movielens(real_data_dir: Path) -> None:
    settings = DataSettings(data=DataConfig(dataset="movielens", data_path=real_data_dir / "ml-latest-small"))

    payload = run_baseline(settings, UpperBoundConfig(eval=EvalConfig(ks=(10,))))
    ndcg = {name: metrics["ndcg@10"] for name, metrics in payload["results"].items()}

    assert ndcg["ease"] > ndcg["itemknn"] > ndcg["popularity"], ndcg
    assert ndcg["multvae"] > 1.1 * ndcg["popularity"], ndcg
