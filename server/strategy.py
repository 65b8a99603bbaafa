"""Aggregating client replies: FedAvg of the bundle by number of users; ε as the maximum over clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common import keys


@dataclass(frozen=True)
class ClientReply:
    """One client's reply: its content, or the error Flower reported for it."""

    node: int
    content: RecordDict | None
    error: str | None = None


@dataclass
class ClientOutcomes:
    """Replies split into answered (trained / released), refused (budget) and failed, with the ε summary."""

    trained: list[ClientReply]
    log: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundOutcome:
    """What one round's replies amount to."""

    arrays: ArrayRecord | None
    log: dict[str, Any] = field(default_factory=dict)


def as_client_replies(replies: list[Message]) -> list[ClientReply]:
    return [
        ClientReply(
            r.metadata.src_node_id, None if r.has_error() else r.content, r.error.reason if r.has_error() else None
        )
        for r in replies
    ]


def _metric(reply: ClientReply, name: str) -> float:
    assert reply.content is not None
    return keys.number(reply.content[keys.METRICS], name)


def client_outcomes(replies: list[ClientReply]) -> ClientOutcomes:
    """Split replies; ε is the maximum over the clients that reported one (answered or refused).

    A federation's guarantee is only as strong as its weakest client, so ε is never averaged.
    """
    trained: list[ClientReply] = []
    refused: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for reply in replies:
        if reply.content is None:
            failed.append({"node": reply.node, "reason": reply.error})
            continue
        if keys.number(reply.content[keys.METRICS], keys.REFUSED):
            reason = str(reply.content[keys.CONFIG][keys.REASON])
            refused.append({"node": reply.node, "reason": reason, "epsilon": _metric(reply, keys.EPSILON)})
        else:
            trained.append(reply)
    epsilons = [_metric(r, keys.EPSILON) for r in trained] + [r["epsilon"] for r in refused]
    log: dict[str, Any] = {
        "trained": [r.node for r in trained],
        "refused": refused,
        "failed": failed,
        "epsilon_max": max(epsilons) if epsilons else None,
        "epsilon_min": min(epsilons) if epsilons else None,
        "epsilon_by_node": {str(r.node): _metric(r, keys.EPSILON) for r in trained},
        "delta_by_node": {str(r.node): _metric(r, keys.DELTA) for r in trained},
    }
    return ClientOutcomes(trained, log)


def aggregate_round(server_round: int, replies: list[Message]) -> RoundOutcome:
    """Aggregate Flower reply messages (see :func:`aggregate_replies`)."""
    return aggregate_replies(server_round, as_client_replies(replies))


def aggregate_replies(server_round: int, replies: list[ClientReply]) -> RoundOutcome:
    """Split replies into trained / refused / failed, FedAvg the trained ones, summarise metrics.

    Losses are weighted by users; the bundle is FedAvg-ed weighted by users.
    """
    outcome = client_outcomes(replies)
    trained = outcome.trained
    log = {"round": server_round, **outcome.log}
    if not trained:
        return RoundOutcome(None, log)
    weights = np.array([_metric(r, keys.NUM_EXAMPLES) for r in trained])
    for name in keys.LOSS_KEYS:
        log[name] = float(np.dot([_metric(r, name) for r in trained], weights) / weights.sum())
    log["users"] = int(weights.sum())
    arrays = aggregate_arrayrecords([r.content for r in trained if r.content is not None], keys.NUM_EXAMPLES)
    return RoundOutcome(arrays, log)
