"""Before anything is spent: which nodes can take part, and the rule that a run that trained too few fails.

At the start the server asks every connected node (a ``query`` message, no ε spent) for its
catalogue and whether the run's remaining plan fits the node's own budget. A node that refuses
(budget, missing or unreadable data, no cap of its own), fails, or holds another catalogue than
the majority stops the run with one line naming it and the reason — unless the operator set
``allow-degraded = true``, in which case it is left out and the run goes on with the others, as
long as ``min-clients`` remain.

During the run, a stage (the statistics release, a round) in which fewer than ``min-clients``
clients answered fails the run the same way, unless ``allow-degraded``. Whatever the setting,
a run in which no client trained in any round fails: it has nothing to synthesize from.
"""

from __future__ import annotations

import secrets
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import AdmissionQuery, AdmissionReply
from fedsynth.common.federated.round_log import RoundLog
from fedsynth.common.runtime.files import write_text_atomic
from fedsynth.server.aggregation import ClientReply, as_client_replies, reply_problem
from fedsynth.server.exchange import send_and_receive


class RunFailed(FedsynthError):
    """The run stopped: too few clients could take part. The message names the nodes and what to do."""


def run_key(out_dir: Path) -> str:
    """This run directory's key (``OUT/run-key``, made once): how a node's ledger knows a resumed run."""
    path = out_dir / "run-key"
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_hex(16)
    write_text_atomic(path, key + "\n")
    return key


def identity_fields(out_dir: Path) -> dict[str, str]:
    """What every request says about the run: its key and the requester (host and output directory)."""
    return {wire.RUN_KEY: run_key(out_dir), wire.REQUESTER: f"{socket.gethostname()}:{out_dir.resolve()}"}


@dataclass(frozen=True)
class Admission:
    """The nodes admitted to the run, the shared catalogue, and the ones left out with why."""

    nodes: list[int]
    item_ids: list[str]
    excluded: dict[int, str]
    caps: dict[int, float]  # each node's lifetime ε cap, as it reported it
    spent_before: dict[int, float]  # each node's cumulative ε before this run (earlier runs, earlier attempts)


def _problem(reply: ClientReply) -> str | None:
    """Why a node cannot take part, as the start line says it (None: it can)."""
    problem = reply_problem(reply)
    if problem is None:
        return None
    return f"failed ({problem.reason})" if problem.epsilon is None else f"refused: {problem.reason}"


def admit(grid: Grid, nodes: list[int], config: RunConfig, query: AdmissionQuery) -> Admission:
    """Query ``nodes`` with the run's plan (``query``); raise RunFailed if the run cannot start."""
    messages = [Message(query.to_record(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = as_client_replies(send_and_receive(grid, messages, config.reply_timeout), messages)
    return decide_admission(replies, config)


def decide_admission(replies: list[ClientReply], config: RunConfig) -> Admission:
    """Which nodes take part, from their answers to the start query (see the module docstring)."""
    problems = {r.node: p for r in replies if (p := _problem(r)) is not None}
    answered = [r for r in replies if r.node not in problems]
    answers = {r.node: AdmissionReply.from_record(r.content) for r in answered if r.content is not None}
    catalogues = {node: tuple(answer.item_ids) for node, answer in answers.items()}
    shared: tuple[str, ...] = ()
    if catalogues:
        shared = Counter(catalogues.values()).most_common(1)[0][0]
        for node, catalogue in catalogues.items():
            if catalogue != shared:
                problems[node] = (
                    f"holds a catalogue of {len(catalogue)} items, not the {len(shared)}-item catalogue of the "
                    "others; give every node the same catalogue-path file"
                )
    admitted = sorted(n for n in catalogues if n not in problems)
    if problems and not config.allow_degraded:
        raise RunFailed(
            "the run stops before spending any budget: "
            + "; ".join(f"node {n} {why.rstrip('.')}" for n, why in sorted(problems.items()))
            + ". Fix these nodes, or set allow-degraded=true to run without them."
        )
    if len(admitted) < config.min_clients:
        listed = "; ".join(f"node {n} {why.rstrip('.')}" for n, why in sorted(problems.items())) or "none left out"
        raise RunFailed(
            f"only {len(admitted)} node(s) can take part, min-clients is {config.min_clients} ({listed}); "
            "nothing was spent. Fix the nodes named or lower min-clients."
        )
    reported = {n: answers[n] for n in admitted}
    caps = {n: a.epsilon_cap for n, a in reported.items() if a.epsilon_cap is not None}
    before = {n: a.epsilon for n, a in reported.items() if a.epsilon is not None}
    return Admission(admitted, list(shared), problems, caps, before)


def require_quorum(stage: str, log: RoundLog, config: RunConfig) -> None:
    """Fail the run if fewer than ``min-clients`` answered in ``stage`` (unless ``allow-degraded``)."""
    answered = len(log.trained)
    if answered >= config.min_clients or config.allow_degraded:
        return
    reasons = [f"node {p.node} refused: {p.reason}" for p in log.refused]
    reasons += [f"node {p.node} failed: {p.reason}" for p in log.failed]
    raise RunFailed(
        f"{stage}: only {answered} client(s) answered, min-clients is {config.min_clients} ("
        + ("; ".join(reasons) or "no client was asked")
        + "). No result is written; fix the nodes named, or set allow-degraded=true to accept degraded rounds."
    )


def require_training(rounds: list[RoundLog]) -> None:
    """Fail a run in which no client trained in any round: its models are untrained."""
    if rounds and not any(r.trained for r in rounds):
        raise RunFailed(
            "no client trained in any round, so the models are untrained and no result is written "
            f"({'; '.join(p.reason for p in rounds[-1].refused + rounds[-1].failed)})."
        )
