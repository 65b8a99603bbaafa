"""Spreading users over federated clients, with flwr-datasets partitioners.

All users (train, validation and test) are partitioned together, so each client holds
its own training users and its own held-out users for local evaluation, drawn from the
same distribution. Schemes:

* ``iid``: users shuffled by seed, then cut into equal shards (``IidPartitioner``'s, by numpy);
* ``dirichlet``: per-label client proportions ~ Dir(α) (``DirichletPartitioner``) over
  taste clusters (k-means on a truncated SVD of the interaction rows) or a user attribute;
* ``natural``: one client per value of a user attribute (``NaturalIdPartitioner``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsynth.common.config.sections import PartitionConfig
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.split import Split
from fedsynth.common.errors import ConfigError
from fedsynth.common.runtime.seeding import rng_for


@dataclass(frozen=True)
class ClientPartition:
    """The users one client holds; arrays are row indices into the Interactions matrix."""

    client_id: int
    train_users: np.ndarray
    validation_users: np.ndarray
    test_users: np.ndarray
    label: str = ""  # the attribute value of a natural partition
    audit_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # reserved non-members

    def summary(self, matrix: sp.csr_matrix) -> dict[str, Any]:
        train = matrix[self.train_users]
        return {
            "client": self.client_id,
            "label": self.label,
            "train_users": len(self.train_users),
            "validation_users": len(self.validation_users),
            "test_users": len(self.test_users),
            "audit_users": len(self.audit_users),
            "train_interactions": int(train.nnz),
            "train_items": int(np.count_nonzero(np.diff(train.tocsc().indptr))),
        }


def taste_clusters(matrix: sp.csr_matrix, num_clusters: int, seed: int) -> np.ndarray:
    """Cluster users by taste: k-means on the L2-normalised rows' truncated SVD. Returns (n_users,) labels."""
    from scipy.cluster.vq import kmeans2
    from scipy.sparse.linalg import svds

    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    normalised = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix
    rank = max(1, min(32, min(matrix.shape) - 1))
    rng = np.random.default_rng(seed)
    v0 = rng.random(min(matrix.shape))
    u, s, _ = svds(normalised.astype(np.float64), k=rank, v0=v0, random_state=seed)
    embedding = u * s
    k = min(num_clusters, matrix.shape[0])
    _, labels = kmeans2(embedding, k, minit="++", seed=seed)
    return np.asarray(labels)


def user_labels(interactions: Interactions, config: PartitionConfig) -> np.ndarray:
    """The label each user is partitioned by (taste cluster or attribute value), as strings."""
    if config.scheme == "dirichlet" and config.by == "cluster":
        labels = taste_clusters(interactions.matrix, config.num_clusters, config.seed)
        return np.asarray([f"cluster-{c}" for c in labels])
    attributes = interactions.user_attributes
    available = [] if attributes is None else list(attributes.columns)
    if attributes is None or config.by not in attributes.columns:
        options = ", ".join(available) if available else "none (this source has no user attributes)"
        extra = " or 'cluster' (taste clusters)" if config.scheme == "dirichlet" else ""
        raise ConfigError(
            f"--partition {config.scheme} by {config.by!r}: no such user attribute; available: {options}{extra}."
        )
    return attributes[config.by].astype(str).to_numpy()


def partition_users(interactions: Interactions, split: Split, config: PartitionConfig) -> list[ClientPartition]:
    """Partition every user over clients by ``config``; checks each client's training users.

    Raises ConfigError at set-up (not mid-run) if a client gets fewer than
    ``config.min_train_users`` training users, naming the client and what to change.
    """
    rng = rng_for(config.seed, "partition")
    rows = np.arange(interactions.num_users)
    if config.scheme == "iid":
        parts = iid_shards(rows[rng.permutation(len(rows))], config.num_clients)
    else:
        parts = labelled_parts(rows, user_labels(interactions, config), split, config)
    role = np.zeros(interactions.num_users, dtype=np.int8)  # 0 train, 1 validation, 2 test, 3 audit
    role[split.validation.users] = 1
    role[split.test.users] = 2
    role[split.audit_users] = 3
    clients = []
    for client_id, (part, label) in enumerate(parts):
        members = np.sort(np.asarray(part, dtype=np.int64))
        clients.append(
            ClientPartition(
                client_id,
                members[role[members] == 0],
                members[role[members] == 1],
                members[role[members] == 2],
                label,
                members[role[members] == 3],
            )
        )
    check_partitions(clients, config)
    return clients


def iid_shards(rows: np.ndarray, num_clients: int) -> list[tuple[np.ndarray, str]]:
    """``rows`` (already shuffled) cut into ``num_clients`` contiguous shards, the first ``len % num_clients``
    one row longer: exactly flwr-datasets' ``IidPartitioner`` (``Dataset.shard(contiguous=True)``, tested
    against it), without importing Hugging Face ``datasets`` (3 s in every process) for a slice."""
    return [(shard, "") for shard in np.array_split(rows, num_clients)]


def labelled_parts(
    rows: np.ndarray, labels: np.ndarray, split: Split, config: PartitionConfig
) -> list[tuple[np.ndarray, str]]:
    """(rows, label) per client by flwr-datasets' Dirichlet (over ``labels``) or natural-id partitioner."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, NaturalIdPartitioner, Partitioner

    dataset = datasets.Dataset.from_dict({"row": rows, "label": labels})
    partitioner: Partitioner
    if config.scheme == "dirichlet":
        train_share = len(split.train_users) / max(1, len(rows))
        partitioner = DirichletPartitioner(
            num_partitions=config.num_clients,
            partition_by="label",
            alpha=config.alpha,
            min_partition_size=math.ceil(config.min_train_users / max(train_share, 1e-9)),
            self_balancing=False,
            seed=config.seed,
        )
    else:
        partitioner = NaturalIdPartitioner(partition_by="label")
    partitioner.dataset = dataset
    try:
        parts = [partitioner.load_partition(i) for i in range(partitioner.num_partitions)]
    except ValueError as exc:
        raise ConfigError(
            f"cannot partition {len(rows):,} users into {config.num_clients} clients with "
            f"dirichlet alpha={config.alpha}: {exc}. Use fewer clients or a larger alpha."
        ) from exc
    natural = config.scheme == "natural"
    return [(np.asarray(p["row"]), str(p["label"][0]) if natural and len(p) else "") for p in parts]


def check_partitions(clients: list[ClientPartition], config: PartitionConfig) -> None:
    """Raise ConfigError if any client has fewer training users than ``config.min_train_users``."""
    for client in clients:
        if len(client.train_users) < config.min_train_users:
            label = f" ({config.by}={client.label})" if client.label else ""
            raise ConfigError(
                f"client {client.client_id}{label} has {len(client.train_users)} training user(s), fewer than "
                f"the {config.min_train_users} needed (the batch size). Use fewer clients (--clients), a larger "
                "Dirichlet alpha, a smaller batch size, or more data."
            )


def partition_table(clients: list[ClientPartition], matrix: sp.csr_matrix) -> pd.DataFrame:
    """One row per client: users by role, training interactions and items."""
    return pd.DataFrame([client.summary(matrix) for client in clients])


def save_partitions(
    clients: list[ClientPartition], matrix: sp.csr_matrix, config: PartitionConfig, out_dir: Path
) -> None:
    """Write ``partitions.csv`` (summary) and ``partitions.json`` (config and the user rows per client)."""
    from fedsynth.common.runtime.files import write_json_atomic, write_text_atomic

    table = partition_table(clients, matrix)
    write_text_atomic(out_dir / "partitions.csv", table.to_csv(index=False))
    write_json_atomic(
        out_dir / "partitions.json",
        {
            "config": json.loads(json.dumps(asdict(config))),
            "clients": [
                {
                    "client": c.client_id,
                    "label": c.label,
                    "train_users": c.train_users.tolist(),
                    "validation_users": c.validation_users.tolist(),
                    "test_users": c.test_users.tolist(),
                }
                for c in clients
            ],
        },
    )
