"""Reading the nodes' replies: answered, refused or failed, and what each says it spent (ε, δ, users)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict

from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import ProtocolError, Refusal, Spent
from fedsynth.common.federated.round_log import NodeProblem, RoundLog


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
    log: RoundLog


@dataclass
class RoundOutcome:
    """What one round's replies amount to: the FedAvg-ed bundle (None: nobody trained) and the log."""

    arrays: ArrayRecord | None
    log: RoundLog


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


def reply_spent(reply: ClientReply) -> Spent:
    """What an answering node's reply says it spent (:class:`fedsynth.common.federated.protocol.Spent`)."""
    assert reply.content is not None
    return Spent.from_metrics(reply.content.metric_records[wire.METRICS], f"node {reply.node}'s reply")


def reply_problem(reply: ClientReply) -> NodeProblem | None:
    """Why a node did not answer (failed: ``epsilon`` None; refused: its reported ε), or None if it did.

    A refusal that does not follow the protocol counts as failed."""
    if reply.content is None:
        return NodeProblem(reply.node, str(reply.error))
    try:
        refusal = Refusal.from_record(reply.content)
    except ProtocolError as exc:
        return NodeProblem(reply.node, f"malformed reply: {exc}")
    return None if refusal is None else NodeProblem(reply.node, refusal.reason, refusal.epsilon)


def spend_problem(reply: ClientReply) -> NodeProblem | None:
    """:func:`reply_problem`, and for an answer, a failure if it does not say what it spent (:class:`Spent`)."""
    problem = reply_problem(reply)
    if problem is not None:
        return problem
    try:
        reply_spent(reply)
    except ProtocolError as exc:
        return NodeProblem(reply.node, f"malformed reply: {exc}")
    return None


def _own_noise_epsilon(reply: ClientReply) -> float:
    """ε counting only the node's own noise in secure sums (answered or refused; never below its ε)."""
    assert reply.content is not None
    refusal = Refusal.from_record(reply.content)
    return refusal.epsilon_own_noise if refusal is not None else reply_spent(reply).epsilon_own_noise


def client_outcomes(replies: list[ClientReply], server_round: int = 0) -> ClientOutcomes:
    """Split replies into answered / refused / failed; the log's ε is the maximum over the clients
    that reported one (answered or refused): a federation's guarantee is only as strong as its
    weakest client, so ε is never averaged."""
    trained: list[ClientReply] = []
    log = RoundLog(server_round)
    for reply in replies:
        problem = spend_problem(reply)
        if problem is None:
            trained.append(reply)
        else:
            (log.failed if problem.epsilon is None else log.refused).append(problem)
    failed = {problem.node for problem in log.failed}
    spent = {r.node: reply_spent(r) for r in trained}
    log.trained = [r.node for r in trained]
    log.epsilon_by_node = {str(node): s.epsilon for node, s in spent.items()}
    log.epsilon_own_noise_by_node = {
        str(r.node): _own_noise_epsilon(r) for r in replies if r.content is not None and r.node not in failed
    }
    # a resumed run's round already charged: the node sent its saved reply again (no new ε)
    log.replayed = [r.node for r in trained if r.content and wire.REPLAYED in r.content.metric_records[wire.METRICS]]
    log.delta_by_node = {str(node): s.delta for node, s in spent.items()}
    return ClientOutcomes(trained, log)


def client_participation(logs: list[RoundLog], connected: list[int]) -> dict[str, Any]:
    """Who took part, who failed when, and who is missing at the end (for metrics.json and the report).

    ``logs``: the statistics release's log and each round's log; ``connected``: nodes online now.
    A node is *missing* if it took part in the run but is not connected at the end or failed in the
    last round it was asked to join.
    """
    seen: dict[int, str] = {}
    failures = []
    for entry in logs:
        seen.update({int(node): "answered" for node in entry.trained})
        seen.update({problem.node: "refused" for problem in entry.refused})
        for problem in entry.failed:
            seen[problem.node] = "failed"
            failures.append({"round": entry.round, "node": problem.node, "reason": problem.reason})
    online = {int(n) for n in connected}
    missing = sorted(n for n, last in seen.items() if n not in online or last == "failed")
    return {"participants": sorted(seen), "connected_at_end": sorted(online), "missing": missing, "failures": failures}
