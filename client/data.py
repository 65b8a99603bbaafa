"""Where this node's users come from.

Simulation: the run config names the dataset and partitioning, and the node's
``partition-id`` / ``num-partitions`` pick its share (the same deterministic split and
partition on every node): its training users, and its own held-out test users for
federated evaluation. Deployment with per-node files is not built yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.data.partition import partition_users
from common.data.pipeline import prepare
from common.data.split import HeldOutUsers
from common.errors import ConfigError
from common.federation import RunConfig


@dataclass(frozen=True)
class NodeData:
    """One node's users: training rows (CSR users × the shared item space) and held-out test users."""

    train: sp.csr_matrix
    test: HeldOutUsers
    item_ids: np.ndarray  # (n_items,) original ids of the shared catalogue


@lru_cache(maxsize=4)
def _partitioned(config: RunConfig, num_partitions: int) -> tuple[NodeData, ...]:
    prepared = prepare(config.data())
    clients = partition_users(prepared.interactions, prepared.split, config.partitioning(num_partitions))
    test = prepared.split.test
    return tuple(
        NodeData(
            prepared.interactions.matrix[c.train_users],
            test.subset(np.flatnonzero(np.isin(test.users, c.test_users))),
            prepared.interactions.item_ids,
        )
        for c in clients
    )


def node_data(node_config: dict[str, Any], config: RunConfig) -> NodeData:
    """This node's users."""
    if "partition-id" not in node_config:
        raise ConfigError(
            "this node has no partition-id in its node config; per-node data files (data-path) are not supported yet."
        )
    partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    return _partitioned(config, num_partitions)[partition_id]


def client_training_rows(node_config: dict[str, Any], config: RunConfig) -> sp.csr_matrix:
    """This node's training users (CSR, users × the shared item space)."""
    return node_data(node_config, config).train
