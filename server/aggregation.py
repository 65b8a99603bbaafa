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


def reply_node(reply: Message, sent: list[Message]) -> int:
    """The client a reply is about: Flower's own error replies (node unavailable) come from the
    SuperLink, so they are matched to the request they answer, whose destination is the client."""
    destinations = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
    return int(destinations.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id))


def as_client_replies(
    replies: list[Message], sent: list[Message] | None = None, timeout: float = 0.0
) -> list[ClientReply]:
    """Flower's replies as ClientReply; a client sent a request that did not answer is a failed reply."""
    sent = sent or []
    out = [
        ClientReply(
            reply_node(r, sent), None if r.has_error() else r.content, r.error.reason if r.has_error() else None
        )
        for r in replies
    ]
    return with_silent(out, [m.metadata.dst_node_id for m in sent], timeout)


def with_silent(replies: list[ClientReply], expected: list[int], timeout: float) -> list[ClientReply]:
    """``replies`` plus a failed reply for every expected client that did not answer."""
    answered = {reply.node for reply in replies}
    silent = [n for n in expected if n not in answered]
    return replies + [ClientReply(n, None, f"no reply within {timeout:g} s (node offline or too slow)") for n in silent]


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
        # a resumed run's round already charged: the node sent its saved reply again (no new ε)
        "replayed": [r.node for r in trained if r.content and keys.REPLAYED in r.content[keys.METRICS]],
        "delta_by_node": {str(r.node): _metric(r, keys.DELTA) for r in trained},
    }
    return ClientOutcomes(trained, log)


def aggregate_round(
    server_round: int, replies: list[Message], sent: list[Message] | None = None, timeout: float = 0.0
) -> RoundOutcome:
    """Aggregate Flower reply messages (see :func:`aggregate_replies`); silent recipients of ``sent`` fail."""
    return aggregate_replies(server_round, as_client_replies(replies, sent, timeout))


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
        if all(r.content is not None and name in r.content[keys.METRICS] for r in trained):  # no GAN: no GAN losses
            log[name] = float(np.dot([_metric(r, name) for r in trained], weights) / weights.sum())
    log["users"] = int(weights.sum())
    arrays = aggregate_arrayrecords([r.content for r in trained if r.content is not None], keys.NUM_EXAMPLES)
    return RoundOutcome(arrays, log)


def client_participation(logs: list[dict[str, Any]], connected: list[int]) -> dict[str, Any]:
    """Who took part, who failed when, and who is missing at the end (for metrics.json and the report).

    ``logs``: the statistics release's log and each round's log; ``connected``: nodes online now.
    A node is *missing* if it took part in the run but is not connected at the end or failed in the
    last round it was asked to join.
    """
    seen: dict[int, str] = {}
    failures = []
    for entry in logs:
        for node in entry.get("trained", []):
            seen[int(node)] = "answered"
        for item in entry.get("refused", []):
            seen[int(item["node"])] = "refused"
        for item in entry.get("failed", []):
            seen[int(item["node"])] = "failed"
            failures.append({"round": entry.get("round"), "node": int(item["node"]), "reason": item["reason"]})
    online = {int(n) for n in connected}
    missing = sorted(n for n, last in seen.items() if n not in online or last == "failed")
    return {"participants": sorted(seen), "connected_at_end": sorted(online), "missing": missing, "failures": failures}
