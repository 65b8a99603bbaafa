"""Where this node's training users come from.

Simulation: the run config names the dataset and partitioning, and the node's
``partition-id`` / ``num-partitions`` pick its share (the same deterministic split and
partition on every node). Deployment with per-node files is not built yet.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import scipy.sparse as sp

from common.data.partition import partition_users
from common.data.pipeline import prepare
from common.errors import ConfigError
from common.federation import RunConfig


@lru_cache(maxsize=4)
def _partitioned(config: RunConfig, num_partitions: int) -> tuple[sp.csr_matrix, ...]:
    prepared = prepare(config.data())
    clients = partition_users(prepared.interactions, prepared.split, config.partitioning(num_partitions))
    return tuple(prepared.interactions.matrix[c.train_users] for c in clients)


def client_training_rows(node_config: dict[str, Any], config: RunConfig) -> sp.csr_matrix:
    """This node's training users (CSR, users × the shared item space)."""
    if "partition-id" not in node_config:
        raise ConfigError(
            "this node has no partition-id in its node config; per-node data files (data-path) are not supported yet."
        )
    partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    return _partitioned(config, num_partitions)[partition_id]
