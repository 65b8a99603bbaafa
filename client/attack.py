"""A simulated malicious silo's side: what it sends instead (simulation only).

See :mod:`fedsynth.common.robustness.attacks`.

The honest handlers run unchanged; a silo that cheats then alters its reply: its trained bundle
(``scaled-update``, ``random-update``) or its DP item counts (``inflated-counts``). The
``target-items`` attack is in its data (:mod:`fedsynth.client.data` adds the fake users before anything
is computed), so every reply of that silo is honest about poisoned data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, RecordDict

from fedsynth.common.federated import wire
from fedsynth.common.robustness.attacks import UPDATE_ATTACKS, AttackConfig, inflate_counts, poison_rows, tampered_state
from fedsynth.common.runtime.seeding import rng_for
from fedsynth.common.secagg.updates import State


@dataclass(frozen=True)
class MaliciousSilo:
    """A cheating silo: the attack it runs, the target items, and its partition (for its random streams)."""

    attack: AttackConfig
    targets: np.ndarray
    partition_id: int
    seed: int


def malicious_silo(
    attack: AttackConfig, targets: np.ndarray | None, partition_id: int, seed: int
) -> MaliciousSilo | None:
    """The simulated silo ``partition_id`` as a cheat, or None if it is honest."""
    if targets is None or not attack.malicious(partition_id):
        return None
    return MaliciousSilo(attack, targets, partition_id, seed)


def silo_rows(rows: sp.csr_matrix, silo: MaliciousSilo | None) -> sp.csr_matrix:
    """The rows the silo computes everything from: its users, plus fake ones under ``target-items``."""
    if silo is None or silo.attack.kind != "target-items":
        return rows
    rng = rng_for(silo.seed, f"attack-fake-users-{silo.partition_id}")
    return poison_rows(rows, silo.targets, silo.attack.fake_users, rng)


def tampered_train_reply(reply: RecordDict, request: RecordDict, silo: MaliciousSilo | None) -> RecordDict:
    """``reply`` to a train request, its bundle replaced by the update attack's (unchanged otherwise)."""
    if silo is None or silo.attack.kind not in UPDATE_ATTACKS or wire.ARRAYS not in reply:
        return reply
    server_round = int(wire.number(request.config_records[wire.CONFIG], wire.SERVER_ROUND))
    rng = rng_for(silo.seed, f"attack-update-{silo.partition_id}-{server_round}")
    current = request.array_records[wire.ARRAYS].to_torch_state_dict()
    trained = reply.array_records[wire.ARRAYS].to_torch_state_dict()
    sent = tampered_state(silo.attack.kind, current, trained, silo.attack.scale, rng)
    return RecordDict({wire.ARRAYS: ArrayRecord(sent), wire.METRICS: reply.metric_records[wire.METRICS]})


def tampered_update(silo: MaliciousSilo, current: State, trained: State, server_round: int) -> State:
    """Under secure aggregation: the state whose update the cheat sends (masked, unbounded: it ignores any
    update-norm-bound, and reports its honest update's norm), its honest one for other attacks."""
    if silo.attack.kind not in UPDATE_ATTACKS:
        return trained
    rng = rng_for(silo.seed, f"attack-update-{silo.partition_id}-{server_round}")
    return tampered_state(silo.attack.kind, current, trained, silo.attack.scale, rng)


def tampered_statistics_reply(reply: RecordDict, request: RecordDict, silo: MaliciousSilo | None) -> RecordDict:
    """``reply`` of a DP first-order release (the statistics, or the co-occurrence's budget spent on them again)
    with the target items' counts inflated by the silo's users; any other reply as it is."""
    if silo is None or silo.attack.kind != "inflated-counts" or wire.ARRAYS not in reply:
        return reply
    arrays = reply.array_records[wire.ARRAYS].to_torch_state_dict()
    if wire.ITEM_COUNTS not in arrays:  # a masked (secure) release: not simulated, refused by the run config
        return reply
    metrics = reply.metric_records[wire.METRICS]
    users = int(wire.number(metrics, wire.NUM_EXAMPLES))
    arrays[wire.ITEM_COUNTS] = torch.from_numpy(inflate_counts(arrays[wire.ITEM_COUNTS].numpy(), silo.targets, users))
    return RecordDict({wire.ARRAYS: ArrayRecord(arrays), wire.METRICS: metrics})
