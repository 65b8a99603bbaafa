"""Aggregating client replies: FedAvg of the bundle by number of users; ε as the maximum over clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common import keys


@dataclass
class RoundOutcome:
    """What one round's replies amount to."""

    arrays: ArrayRecord | None
    log: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientReply:
    """One client's reply: its content, or the error Flower reported for it."""

    node: int
    content: RecordDict | None
    error: str | None = None


def aggregate_round(server_round: int, replies: list[Message]) -> RoundOutcome:
    """Aggregate Flower reply messages (see :func:`aggregate_replies`)."""
    return aggregate_replies(
        server_round,
        [
            ClientReply(
                r.metadata.src_node_id, None if r.has_error() else r.content, r.error.reason if r.has_error() else None
            )
            for r in replies
        ],
    )


def aggregate_replies(server_round: int, replies: list[ClientReply]) -> RoundOutcome:
    """Split replies into trained / refused / failed, FedAvg the trained ones, summarise metrics.

    ε is the maximum over the clients that reported one (trained or refused): a federation's
    guarantee is only as strong as its weakest client, so it is never averaged. Losses are
    weighted by users; the bundle is FedAvg-ed weighted by users.
    """
    trained: list[ClientReply] = []
    refused: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for reply in replies:
        if reply.content is None:
            failed.append({"node": reply.node, "reason": reply.error})
            continue
        metrics = reply.content[keys.METRICS]
        if keys.number(metrics, keys.REFUSED):
            reason = str(reply.content[keys.CONFIG][keys.REASON])
            refused.append({"node": reply.node, "reason": reason, "epsilon": keys.number(metrics, keys.EPSILON)})
        else:
            trained.append(reply)

    def metric(reply: ClientReply, name: str) -> float:
        assert reply.content is not None
        return keys.number(reply.content[keys.METRICS], name)

    epsilons = [metric(r, keys.EPSILON) for r in trained] + [r["epsilon"] for r in refused]
    log: dict[str, Any] = {
        "round": server_round,
        "trained": [r.node for r in trained],
        "refused": refused,
        "failed": failed,
        "epsilon_max": max(epsilons) if epsilons else None,
        "epsilon_min": min(epsilons) if epsilons else None,
        "epsilon_by_node": {str(r.node): metric(r, keys.EPSILON) for r in trained},
    }
    if not trained:
        return RoundOutcome(None, log)
    weights = np.array([metric(r, keys.NUM_EXAMPLES) for r in trained])
    for name in keys.LOSS_KEYS:
        log[name] = float(np.dot([metric(r, name) for r in trained], weights) / weights.sum())
    log["users"] = int(weights.sum())
    arrays = aggregate_arrayrecords([r.content for r in trained if r.content is not None], keys.NUM_EXAMPLES)
    return RoundOutcome(arrays, log)
