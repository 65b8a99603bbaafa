"""Partitioning users over clients: IID, Dirichlet (clusters, attributes), natural; set-up errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.config.sections import PartitionConfig
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.partition import iid_shards, partition_users, save_partitions
from fedsynth.common.data.split import Split
from fedsynth.common.errors import ConfigError


def all_users(clients: list) -> np.ndarray:  # type: ignore[type-arg]
    return np.concatenate([np.concatenate([c.train_users, c.validation_users, c.test_users]) for c in clients])


def test_iid_covers_every_user_once_with_balanced_sizes(small_interactions: Interactions, small_split: Split) -> None:
    clients = partition_users(small_interactions, small_split, PartitionConfig(num_clients=4))

    users = all_users(clients)
    assert sorted(users.tolist()) == list(range(small_interactions.num_users))
    sizes = [len(c.train_users) + len(c.validation_users) + len(c.test_users) for c in clients]
    assert max(sizes) - min(sizes) <= 1


def test_held_out_users_are_spread_over_clients(small_interactions: Interactions, small_split: Split) -> None:
    """Regression: the split and the partition must not draw the same random stream."""
    clients = partition_users(small_interactions, small_split, PartitionConfig(num_clients=4))

    assert all(len(c.test_users) > 0 and len(c.train_users) > 0 for c in clients)
    assert sorted(np.concatenate([c.test_users for c in clients]).tolist()) == sorted(small_split.test.users.tolist())


def label_skew(clients: list, labels: pd.Series) -> float:  # type: ignore[type-arg]
    """Mean total-variation distance between each client's label mix and the global mix."""
    overall = labels.value_counts(normalize=True)
    distances = []
    for c in clients:
        members = np.concatenate([c.train_users, c.validation_users, c.test_users])
        mix = labels.iloc[members].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        distances.append(0.5 * float(np.abs(mix - overall).sum()))
    return float(np.mean(distances))


def test_dirichlet_over_an_attribute_is_skewed_and_iid_is_not(
    small_interactions: Interactions, small_split: Split
) -> None:
    assert small_interactions.user_attributes is not None
    labels = small_interactions.user_attributes["taste"]

    iid = partition_users(small_interactions, small_split, PartitionConfig(num_clients=4))
    skewed = partition_users(
        small_interactions, small_split, PartitionConfig.from_spec("dirichlet:0.1:taste", num_clients=4, seed=2)
    )

    assert label_skew(skewed, labels) > label_skew(iid, labels) + 0.2
    assert sorted(all_users(skewed).tolist()) == list(range(small_interactions.num_users))


def test_dirichlet_over_taste_clusters(small_interactions: Interactions, small_split: Split) -> None:
    clients = partition_users(
        small_interactions, small_split, PartitionConfig.from_spec("dirichlet:0.3", num_clients=3)
    )

    assert len(clients) == 3
    assert sorted(all_users(clients).tolist()) == list(range(small_interactions.num_users))


def test_natural_partition_one_client_per_value(small_interactions: Interactions, small_split: Split) -> None:
    assert small_interactions.user_attributes is not None
    regions = small_interactions.user_attributes["region"]

    clients = partition_users(small_interactions, small_split, PartitionConfig.from_spec("natural:region"))

    assert {c.label for c in clients} == set(regions)
    for c in clients:
        members = np.concatenate([c.train_users, c.validation_users, c.test_users])
        assert set(regions.iloc[members]) == {c.label}


def test_unknown_attribute_lists_the_available_ones(small_interactions: Interactions, small_split: Split) -> None:
    with pytest.raises(ConfigError, match=r"no such user attribute; available: region, taste"):
        partition_users(small_interactions, small_split, PartitionConfig.from_spec("natural:age"))


def test_client_with_too_few_users_is_a_set_up_error(small_interactions: Interactions, small_split: Split) -> None:
    config = PartitionConfig(num_clients=10, min_train_users=64)

    with pytest.raises(ConfigError, match=r"client 0 has \d+ training user\(s\), fewer than the 64 needed"):
        partition_users(small_interactions, small_split, config)


def test_partition_spec_parsing_errors() -> None:
    with pytest.raises(ConfigError, match="not understood"):
        PartitionConfig.from_spec("random")
    with pytest.raises(ConfigError, match="alpha must be positive"):
        PartitionConfig.from_spec("dirichlet:-1")
    with pytest.raises(ConfigError, match="dirichlet:abc"):
        PartitionConfig.from_spec("dirichlet:abc")


def test_summaries_are_saved(tmp_path, small_interactions: Interactions, small_split: Split) -> None:  # type: ignore[no-untyped-def]
    config = PartitionConfig(num_clients=3)
    clients = partition_users(small_interactions, small_split, config)

    save_partitions(clients, small_interactions.matrix, config, tmp_path)

    table = pd.read_csv(tmp_path / "partitions.csv")
    assert table["train_users"].sum() == len(small_split.train_users)
    assert set(table.columns) >= {
        "client",
        "train_users",
        "validation_users",
        "test_users",
        "train_interactions",
        "train_items",
    }
    assert (tmp_path / "partitions.json").is_file()


@pytest.mark.parametrize(("users", "clients"), [(10, 3), (610, 5), (7, 7), (1000, 4)])
def test_iid_shards_are_flwr_datasets_iid_partitioner_shards(users: int, clients: int) -> None:
    """The numpy shards are exactly IidPartitioner's (contiguous ``Dataset.shard``) of the same shuffled rows."""
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    rows = np.random.default_rng(0).permutation(users)
    partitioner = IidPartitioner(num_partitions=clients)
    partitioner.dataset = datasets.Dataset.from_dict({"row": rows})
    expected = [list(partitioner.load_partition(i)["row"]) for i in range(clients)]

    assert [list(shard) for shard, _ in iid_shards(rows, clients)] == expected
