"""Simulated malicious silos (simulation only): what a cheating participant sends, and how to measure it.

DP bounds what one *user* moves; a whole silo can send anything. These attacks let a study
measure what one or more bad silos do to the federation (``attack``; silos with
``partition-id < attack-clients`` cheat, the others are honest):

* ``scaled-update`` (model replacement, Bagdasaryan et al. 2020): the silo trains honestly, then
  sends ``w_g + s · (w_local − w_g)``, its update Δ scaled by ``s = attack-scale``;
* ``random-update``: it sends ``w_g + s · ‖Δ_t‖ · u_t`` per tensor t, u_t a uniformly random unit
  direction: noise of ``s`` times the norm of its honest update;
* ``target-items`` (data poisoning, a shilling "average attack"): before anything is computed it
  adds ``⌈attack-fake-users · n⌉`` fake users to its ``n`` users, each holding every target item
  and filler items drawn from the silo's own item popularity (as many as its median history);
  every release (statistics, co-occurrence, rounds) is then computed honestly from poisoned data;
* ``inflated-counts``: it lies in the DP statistics release, adding ``n`` (its user count: every
  user "holds" the targets, the most a per-user bound allows) to each target item's count.

Target items (``attack-targets`` of them) are drawn with the run's seed among the unpopular
items (at least one and at most the median number of users among items with any), so a run with
``attack = none`` and the same ``attack-targets`` measures the very same items cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from fedsynth.common.errors import ConfigError
from fedsynth.common.runtime.seeding import rng_for

ATTACKS = ("none", "scaled-update", "random-update", "target-items", "inflated-counts")
UPDATE_ATTACKS = ("scaled-update", "random-update")
TARGETED_ATTACKS = ("target-items", "inflated-counts")


@dataclass(frozen=True)
class AttackConfig:
    """Which attack, how many silos cheat, how many target items, and the attack's strength."""

    kind: str = "none"
    clients: int = 1  # silos with partition-id < clients cheat
    targets: int = 0  # target items measured (and promoted by the targeted attacks)
    scale: float = 1000.0  # s of the update attacks (DP-SGD updates are small: ×10 is invisible, see docs)
    fake_users: float = 2.0  # target-items: fake users as a share of the silo's real users (1.0: no top-10 hit yet)

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"attack {self.kind!r}: choose one of {', '.join(ATTACKS)}.")
        if self.clients < 1:
            raise ConfigError(f"attack-clients must be at least 1, got {self.clients}.")
        if self.targets < 0:
            raise ConfigError(f"attack-targets must be 0 or more, got {self.targets}.")
        if self.kind in TARGETED_ATTACKS and self.targets == 0:
            raise ConfigError(f"attack {self.kind} promotes target items: give attack-targets (e.g. 5).")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"attack-scale must be a positive number, got {self.scale}.")
        if not 0 < self.fake_users <= 10:
            raise ConfigError(f"attack-fake-users must be in (0, 10] (a share of its users), got {self.fake_users}.")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def malicious(self, partition_id: int) -> bool:
        """Whether the simulated silo ``partition_id`` cheats."""
        return self.active and partition_id < self.clients


def target_items(matrix: sp.csr_matrix, count: int, seed: int) -> np.ndarray:
    """``count`` unpopular items of ``matrix`` (users × items), sorted; the same for a seed and data.

    Candidates: items held by at least one user and by at most the median number of users
    among such items. Raises ConfigError if there are fewer candidates than ``count``.
    """
    users_per_item = np.asarray((matrix > 0).sum(axis=0)).ravel()
    held = users_per_item[users_per_item > 0]
    candidates = np.flatnonzero((users_per_item > 0) & (users_per_item <= np.median(held))) if held.size else held
    if len(candidates) < count:
        raise ConfigError(f"attack-targets {count}: only {len(candidates)} unpopular item(s) to choose from.")
    return np.sort(rng_for(seed, "attack-targets").choice(candidates, size=count, replace=False))


def poison_rows(rows: sp.csr_matrix, targets: np.ndarray, share: float, rng: np.random.Generator) -> sp.csr_matrix:
    """``rows`` (n × items, binary) with ``⌈share · n⌉`` fake users appended (the ``target-items`` attack).

    Each fake user holds every target and ``median history`` filler items drawn without
    replacement from the silo's item popularity (items held by its users, weighted by users).
    """
    n = rows.shape[0]
    fakes = math.ceil(share * n)
    popularity = np.asarray((rows > 0).sum(axis=0)).ravel().astype(np.float64)
    popularity[targets] = 0.0
    filler = int(min(np.median(np.diff(rows.indptr)), np.count_nonzero(popularity)))
    weights = popularity / popularity.sum()
    columns = [
        np.concatenate([targets, rng.choice(rows.shape[1], size=filler, replace=False, p=weights)])
        for _ in range(fakes)
    ]
    indices = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
    indptr = np.arange(fakes + 1) * (len(targets) + filler)
    fake = sp.csr_matrix((np.ones(len(indices), dtype=rows.dtype), indices, indptr), shape=(fakes, rows.shape[1]))
    fake.sort_indices()
    return sp.vstack([rows, fake], format="csr")


def inflate_counts(item_counts: np.ndarray, targets: np.ndarray, num_users: int) -> np.ndarray:
    """The ``inflated-counts`` lie: ``num_users`` added to each target's released count."""
    lied = np.array(item_counts, dtype=np.float64, copy=True)
    lied[targets] += num_users
    return lied


def tampered_state(
    kind: str, current: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor], scale: float,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """What an update attack sends instead of ``trained``, given the global ``current`` state it started from."""
    assert kind in UPDATE_ATTACKS, kind
    sent = {}
    for name, weights in trained.items():
        if not torch.is_floating_point(weights):
            sent[name] = weights
            continue
        delta = weights - current[name].to(weights.dtype)
        if kind == "random-update":
            direction = torch.from_numpy(rng.standard_normal(delta.shape)).to(delta.dtype)
            delta = direction * (delta.norm() / direction.norm().clamp_min(1e-12))
        sent[name] = current[name].to(weights.dtype) + scale * delta
    return sent


def target_share(matrix: sp.csr_matrix, targets: np.ndarray) -> float:
    """The target items' share of all interactions in ``matrix`` (users × items)."""
    total = matrix.nnz
    return float(matrix[:, targets].nnz / total) if total else 0.0
