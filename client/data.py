"""Where this node's users come from.

Simulation: the run config names the dataset and partitioning, and the node's
``partition-id`` / ``num-partitions`` pick its share (the same deterministic split and
partition on every node): its training users, and its own held-out test users for
federated evaluation.

Deployment: the node config names the node's own file (``data-path``) and the shared public
item catalogue (``catalogue-path``); see :mod:`fedsynth.common.data.node_file`. The node's train/held-out
split is its own: drawn with its node config's ``split-seed`` (default 0), never with the run
config's ``seed`` (which the server sends: a new seed would move users between training and
held-out and, before ledgers were keyed by the node, opened a fresh ledger).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedsynth.client.attack import MaliciousSilo, malicious_silo, silo_rows
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import PartitionConfig
from fedsynth.common.data.node_file import split_node_file
from fedsynth.common.data.partition import partition_users
from fedsynth.common.data.prepare import DataSettings, prepare
from fedsynth.common.data.split import HeldOutUsers
from fedsynth.common.errors import ConfigError
from fedsynth.common.robustness.attacks import AttackConfig, target_items
from fedsynth.common.secagg.signing import Signing


@dataclass(frozen=True)
class NodeData:
    """One node's users: training rows (CSR users × the shared item space) and held-out test users."""

    train: sp.csr_matrix
    test: HeldOutUsers
    item_ids: np.ndarray  # (n_items,) original ids of the shared catalogue
    malicious: MaliciousSilo | None = None  # simulation only: this silo cheats (``attack``)


def _partitioned(config: RunConfig, num_partitions: int) -> tuple[NodeData, ...]:
    """Every node's share, cached by what decides it (not the whole run config: nodes of one process that
    differ only in, say, their ledger directory share one copy)."""
    return _partitions(config.data(), config.partitioning(num_partitions), config.attacks(), config.seed)


@lru_cache(maxsize=4)
def _partitions(
    data: DataSettings, partitioning: PartitionConfig, attack: AttackConfig, seed: int
) -> tuple[NodeData, ...]:
    prepared = prepare(data)
    clients = partition_users(prepared.interactions, prepared.split, partitioning)
    test = prepared.split.test
    targets = target_items(prepared.interactions.matrix, attack.targets, seed) if attack.active else None
    nodes = []
    for index, c in enumerate(clients):
        silo = malicious_silo(attack, targets, index, seed)
        rows = silo_rows(prepared.interactions.matrix[c.train_users], silo)
        test_users = test.subset(np.flatnonzero(np.isin(test.users, c.test_users)))
        nodes.append(NodeData(rows, test_users, prepared.interactions.item_ids, silo))
    return tuple(nodes)


@lru_cache(maxsize=4)
def _from_file(data_path: str, catalogue_path: str, seed: int) -> NodeData:
    interactions, split = split_node_file(Path(data_path), Path(catalogue_path), seed)
    return NodeData(split.train, split.test, interactions.item_ids)


def node_data(node_config: dict[str, Any], config: RunConfig) -> NodeData:
    """This node's users: its own file in deployment, its partition in simulation."""
    if "data-path" in node_config:
        if "catalogue-path" not in node_config:
            raise ConfigError(
                "this node's config has data-path but no catalogue-path: every node needs the same public item "
                "catalogue (one item id per line), e.g. --node-config \"data-path='…' catalogue-path='…'\"."
            )
        return _from_file(str(node_config["data-path"]), str(node_config["catalogue-path"]), split_seed(node_config))
    if "partition-id" not in node_config:
        raise ConfigError(
            "this node's config has neither data-path (deployment: its own data file) nor partition-id (simulation)."
        )
    partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    return _partitioned(config, num_partitions)[partition_id]


def split_seed(node_config: dict[str, Any]) -> int:
    """The node's own ``split-seed`` (default 0): which of its users are training and which held out."""
    value = node_config.get("split-seed", 0)
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"node config split-seed={value!r}: give a whole number (default 0).") from None


def check_node_settings(node_config: dict[str, Any], config: RunConfig) -> None:
    """Refuse, before anything is computed, run settings that would weaken a deployed node's DP noise.

    ``evaluation = "exact"`` would release exact metric sums over held-out users; ``reproducible-noise``
    derives every noise draw from the run seed, which the server knows and
    could regenerate and subtract: a node with its own data (``data-path``) never obeys it.
    """
    if "data-path" in node_config and config.evaluation == "exact":
        raise ConfigError(
            'the run asks for evaluation = "exact": exact metric sums over held-out users, not private. A deployed '
            "node (node config data-path) evaluates under DP only; nothing was computed or spent. Run with "
            'evaluation = "auto" (the default) or "dp".'
        )
    Signing.from_node_config(node_config)  # signed secure aggregation: both key files readable, or neither given
    if "data-path" in node_config and config.reproducible_noise:
        raise ConfigError(
            "the run asks for reproducible-noise = true: DP noise derived from the run seed, which the server "
            "knows and could subtract. A deployed node (node config data-path) refuses it; nothing was computed "
            "or spent. Run with reproducible-noise = false (the default)."
        )


def dp_evaluation(node_config: dict[str, Any], config: RunConfig) -> bool:
    """Whether this node's federated evaluation is a DP release: always on a deployed node (``data-path``);
    in simulation when the run asks for ``evaluation = "dp"`` (``auto`` and ``exact``: exact sums)."""
    return "data-path" in node_config or config.evaluation == "dp"
