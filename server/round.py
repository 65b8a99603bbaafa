"""The server's side of a local round, as steps: configure → (the nodes train) → aggregate → server step.

    configure_train   which admitted nodes take part (``fraction-train``, seeded per round) and the
                      TrainRequest they get (round r, the global bundle w_g, the run's identity)
    transport.train   carries the request to the nodes and brings back one aggregate:
                        FlowerRound   (plain)  each node's TrainReply, then aggregate_train
                        SecureRound   (secure aggregation wraps the same request: the nodes mask their
                                       update, the server unmasks only the sum; server/secure_round.py)
                        an in-process transport in the benchmarks calls the node's step directly
    aggregate_train   FedAvg of the trained bundles weighted by users, or the ``robust-aggregation`` rule
    server_step       FedAdam's server optimizer when the strategy has one, else the aggregate as is

:func:`run_rounds` is the loop every caller uses (the ServerApp and the in-process benchmarks), so there is
one implementation of a round. ε is never averaged: a round's log keeps each node's cumulative ε and the
maximum (the federation is only as private as its weakest node).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord

from fedsynth.common.config.run import RunConfig
from fedsynth.common.federated.protocol import Identity, TrainRequest
from fedsynth.common.federated.round_log import RoundLog
from fedsynth.common.robustness.rules import RobustConfig, robust_arrays
from fedsynth.common.runtime.seeding import seed_for
from fedsynth.server.aggregation import ClientReply, RoundOutcome, client_outcomes, reply_spent

log = logging.getLogger("flwr")  # Flower streams its own logger to `flwr run --stream`


@dataclass(frozen=True)
class RoundPlan:
    """Round r's participants and request: ``sampled`` get ``request``; ``missing``: admitted, not connected."""

    request: TrainRequest
    sampled: list[int]
    missing: list[int]


class RoundTransport(Protocol):
    """Carries one round's request to the sampled nodes and returns the round's aggregate and log."""

    def connected(self) -> set[int]: ...

    def train(self, plan: RoundPlan) -> RoundOutcome: ...


def configure_train(
    config: RunConfig, server_round: int, connected: set[int], participants: list[int], arrays: ArrayRecord,
    identity: Identity,
) -> RoundPlan:  # fmt: skip
    """The admitted nodes still connected, sampled by ``fraction-train`` (at least ``min-clients``, seeded per
    round, so a resumed run samples the same nodes), and the request they get."""
    nodes = sorted(connected & set(participants))
    count = max(config.min_clients, round(config.fraction_train * len(nodes)))
    sampler = random.Random(seed_for(config.seed, f"client-sampling-{server_round}"))  # node ids: Python ints
    sampled = sorted(sampler.sample(nodes, min(count, len(nodes))))
    request = TrainRequest(server_round, config.num_server_rounds, arrays, identity)
    return RoundPlan(request, sampled, sorted(set(participants) - set(nodes)))


def aggregate_train(
    server_round: int,
    replies: list[ClientReply],
    current: ArrayRecord | None = None,
    robust: RobustConfig | None = None,
) -> RoundOutcome:
    """Split replies into trained / refused / failed, aggregate the trained bundles, summarise ε.

    No losses arrive (not DP: they stay on the nodes); the bundle is FedAvg-ed weighted by users, or
    aggregated by the ``robust`` rule (:mod:`fedsynth.common.robustness.rules`; ``norm-bound`` needs the
    ``current`` global arrays). Nobody trained: no new arrays.
    """
    outcome = client_outcomes(replies, server_round)
    trained, round_log = outcome.trained, outcome.log
    if not trained:
        return RoundOutcome(None, round_log)
    round_log.users = int(np.sum([reply_spent(r).num_examples for r in trained]))
    contents = [r.content for r in trained if r.content is not None]
    rule = robust or RobustConfig()
    assert current is not None or rule.kind != "norm-bound", "norm-bound needs the current global arrays"
    return RoundOutcome(robust_arrays(contents, current or ArrayRecord(), rule), round_log)


def server_step(optimizer: Any, server_round: int, current: ArrayRecord, outcome: RoundOutcome) -> ArrayRecord:
    """The next global bundle: the aggregate through the strategy's server optimizer (FedAdam), or as is;
    the current one when nobody trained."""
    if outcome.arrays is None:
        return current
    if optimizer is None:
        return outcome.arrays
    state = optimizer.step(server_round, current.to_torch_state_dict(), outcome.arrays.to_torch_state_dict())
    return ArrayRecord(state)


def play_round(
    transport: RoundTransport, config: RunConfig, server_round: int, participants: list[int], arrays: ArrayRecord,
    identity: Identity,
) -> RoundOutcome:  # fmt: skip
    """Round ``server_round``: configure, let ``transport`` carry it, log who answered and ε."""
    started = time.perf_counter()
    plan = configure_train(config, server_round, transport.connected(), participants, arrays, identity)
    outcome = transport.train(plan)
    round_log = outcome.log
    round_log.sampled, round_log.missing_from_sample = plan.sampled, plan.missing
    round_log.seconds = time.perf_counter() - started
    log.info(
        "fedsynth round %d/%d: trained %d, refused %d, failed %d, epsilon max %s (%.1f s)",
        server_round, config.num_server_rounds, len(round_log.trained), len(round_log.refused),
        len(round_log.failed), "-" if round_log.epsilon_max is None else f"{round_log.epsilon_max:.3f}",
        round_log.seconds,
    )  # fmt: skip
    return outcome


Checkpoint = Callable[[int, ArrayRecord, RoundLog, Any], None]
QuorumCheck = Callable[[str, RoundLog, RunConfig], None]


def run_rounds(
    transport: RoundTransport, config: RunConfig, participants: list[int], arrays: ArrayRecord, identity: Identity,
    done: list[RoundLog] | None = None, optimizer_state: dict[str, Any] | None = None,
    checkpoint: Checkpoint | None = None, require_quorum: QuorumCheck | None = None,
) -> tuple[ArrayRecord, list[RoundLog]]:  # fmt: skip
    """The rounds after the ``done`` ones (a resumed run), each played, checked, stepped and checkpointed:
    (the global bundle after the last round, every round's log)."""
    server_optimizer = config.federated_strategy().server_optimizer()
    if server_optimizer is not None and optimizer_state is not None:
        server_optimizer.load_state_dict(optimizer_state)
    rounds = list(done or [])
    for server_round in range(len(rounds) + 1, config.num_server_rounds + 1):
        outcome = play_round(transport, config, server_round, participants, arrays, identity)
        if require_quorum is not None:
            require_quorum(f"round {server_round}", outcome.log, config)
        arrays = server_step(server_optimizer, server_round, arrays, outcome)
        rounds.append(outcome.log)
        if checkpoint is not None:
            checkpoint(server_round, arrays, outcome.log, server_optimizer.state_dict() if server_optimizer else None)
    return arrays, rounds
