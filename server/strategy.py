"""Aggregating client replies: FedAvg of the bundle by number of users; ε as the maximum over clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common import keys


@dataclass
class RoundOutcome:
    """What one round's replies amount to."""

    arrays: ArrayRecord | None
    log: dict[str, Any] = field(default_factory=dict)


def aggregate_round(server_round: int, replies: list[Message]) -> RoundOutcome:
    """Split replies into trained / refused / failed, FedAvg the trained ones, summarise metrics.

    ε is the maximum over the clients that reported one (trained or refused): a federation's
    guarantee is only as strong as its weakest client. Losses are weighted by users.
    """
    trained, refused, failed = [], [], []
    for reply in replies:
        if reply.has_error():
            failed.append({"node": reply.metadata.src_node_id, "reason": reply.error.reason})
            continue
        metrics = reply.content[keys.METRICS]
        if int(metrics[keys.REFUSED]):  # type: ignore[call-overload]
            reason = str(reply.content[keys.CONFIG][keys.REASON])  # type: ignore[index]
            refused.append(
                {"node": reply.metadata.src_node_id, "reason": reason, "epsilon": float(metrics[keys.EPSILON])}
            )  # type: ignore[arg-type]
        else:
            trained.append(reply)
    epsilons = [float(r.content[keys.METRICS][keys.EPSILON]) for r in trained] + [r["epsilon"] for r in refused]  # type: ignore[arg-type]
    log: dict[str, Any] = {
        "round": server_round,
        "trained": [r.metadata.src_node_id for r in trained],
        "refused": refused,
        "failed": failed,
        "epsilon_max": max(epsilons) if epsilons else None,
        "epsilon_min": min(epsilons) if epsilons else None,
        "epsilon_by_node": {str(r.metadata.src_node_id): float(r.content[keys.METRICS][keys.EPSILON]) for r in trained},  # type: ignore[arg-type]
    }
    if not trained:
        return RoundOutcome(None, log)
    weights = np.array([float(r.content[keys.METRICS][keys.NUM_EXAMPLES]) for r in trained])  # type: ignore[arg-type]
    for name in keys.LOSS_KEYS:
        values = np.array([float(r.content[keys.METRICS][name]) for r in trained])  # type: ignore[arg-type]
        log[name] = float((values * weights).sum() / weights.sum())
    log["users"] = int(weights.sum())
    arrays = aggregate_arrayrecords([r.content for r in trained], keys.NUM_EXAMPLES)
    return RoundOutcome(arrays, log)
