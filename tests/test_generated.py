"""The built-in generated data: deterministic and shaped like real interaction data."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.config.sections import GeneratedDataConfig
from fedsynth.common.data.generated import generate_table
from fedsynth.common.errors import ConfigError


def test_same_seed_same_data_other_seed_other_data() -> None:
    config = GeneratedDataConfig(num_users=100, num_items=200, mean_history=30, min_history=10)

    a, b = generate_table(config), generate_table(config)
    c = generate_table(GeneratedDataConfig(num_users=100, num_items=200, mean_history=30, min_history=10, seed=1))

    assert a.frame.equals(b.frame)
    assert not a.frame.equals(c.frame)


def test_default_is_sized_like_movielens_100k() -> None:
    table = generate_table(GeneratedDataConfig())
    frame = table.frame

    assert frame["user"].nunique() == 943
    assert 90_000 <= len(frame) <= 115_000
    assert frame.duplicated(["user", "item"]).sum() == 0
    assert 0.45 <= (frame["value"] >= 4).mean() <= 0.65  # ML-100K: 55% of ratings are 4 or 5
    assert set(np.unique(frame["value"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_shape_long_tail_varied_lengths_clustered_tastes() -> None:
    table = generate_table(GeneratedDataConfig())
    frame = table.frame
    item_counts = np.sort(frame.groupby("item").size().to_numpy())[::-1]
    lengths = frame.groupby("user").size().to_numpy()

    top_decile_share = item_counts[: len(item_counts) // 10].sum() / item_counts.sum()
    assert top_decile_share > 0.3  # long tail: 10% of items hold a large share
    assert lengths.min() >= 20 and lengths.std() / lengths.mean() > 0.5  # varied history lengths
    assert table.user_attributes is not None
    taste = table.user_attributes["taste"]
    items_by_user = frame.groupby("user")["item"].apply(set)

    def mean_jaccard(pairs: list[tuple[int, int]]) -> float:
        return float(
            np.mean(
                [len(items_by_user[a] & items_by_user[b]) / len(items_by_user[a] | items_by_user[b]) for a, b in pairs]
            )
        )

    rng = np.random.default_rng(0)
    users = rng.choice(items_by_user.index.to_numpy(), size=(400, 2))
    same = [(a, b) for a, b in users if a != b and taste[a] == taste[b]]
    different = [(a, b) for a, b in users if taste[a] != taste[b]]
    assert mean_jaccard(same) > 1.3 * mean_jaccard(different)


def test_scales_with_options() -> None:
    table = generate_table(GeneratedDataConfig(num_users=5000, num_items=3000, mean_history=30, min_history=5))

    assert table.frame["user"].nunique() == 5000
    assert table.frame["item"].max() <= 3000


def test_rejects_impossible_settings() -> None:
    with pytest.raises(ConfigError, match="mean-history"):
        GeneratedDataConfig(num_items=100, mean_history=80)
