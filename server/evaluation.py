"""Federated evaluation: send a trained recommender to the clients, merge the metric sums they return.

The server never sees a held-out interaction: each client scores its own held-out users
(fold-in → target) and replies with sums and counts. Deployed nodes add DP noise to them and
charge it to their ledgers (:mod:`fedsynth.client.evaluation`): the merged mean is then Σ noisy sums /
Σ noisy counts, its noise std is reported beside it, and catalogue coverage is not available.
Simulated nodes may reply exactly (a measurement, labelled so), which merges into the metrics a
central computation over all those users would give.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.evaluation.metrics import RankingMetrics
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import (
    DPEvaluationReply,
    EvaluationRequest,
    ExactEvaluationReply,
    Identity,
    NoisySums,
    flag,
)
from fedsynth.common.recommenders.base import Recommender
from fedsynth.common.recommenders.transfer import pack
from fedsynth.server.aggregation import as_client_replies
from fedsynth.server.exchange import send_and_receive


def evaluation_request(
    recommender: Recommender, config: EvalConfig, run: dict[str, wire.ConfigValue] | None = None
) -> RecordDict:
    """The evaluate message's content for ``recommender``; ``run``: the run's identity, planned rounds and the
    row's label (what a DP-evaluating node charges its ledger for)."""
    kind, tensors, settings = pack(recommender)
    run = run or {}
    planned, label = run.get(wire.PLANNED_ROUNDS), run.get(wire.EVALUATION_LABEL)
    identity = Identity(str(run.get(wire.RUN_KEY, "")), str(run.get(wire.REQUESTER, "")))
    request = EvaluationRequest(
        kind, ArrayRecord(tensors), config.ks, config.targets, settings,
        planned_rounds=None if planned is None else int(wire.number(run, wire.PLANNED_ROUNDS)),
        label=None if label is None else str(label), identity=identity,
    )  # fmt: skip
    return request.to_record()


def merge_evaluations(replies: list[RecordDict], config: EvalConfig, num_items: int) -> RankingMetrics:
    """Sum of the clients' exact metric accumulators."""
    total = RankingMetrics(config.ks, num_items, targets=config.targets)
    for content in replies:
        numbers: dict[str, object] = dict(ExactEvaluationReply.from_record(content).numbers)
        total.merge(RankingMetrics.from_numbers(numbers, config.ks, num_items, config.targets))
    return total


def merge_noisy(replies: list[RecordDict]) -> tuple[dict[str, float], float, float]:
    """Σ noisy sums / Σ noisy counts per metric, Σ noisy counts, and the noise std of a mean (≈ √Σ stdₖ² / count)."""
    released = [NoisySums.from_metrics(content.metric_records[wire.METRICS]) for content in replies]
    users = sum(r.users for r in released)
    names = sorted({name for r in released for name in r.sums})
    sums = {name: sum(r.sums[name] for r in released) for name in names}
    std = float(np.sqrt(sum(r.noise_std**2 for r in released)))
    means = {name: value / users if users > 0 else float("nan") for name, value in sums.items()}
    return means, users, std / users if users > 0 else float("inf")


def federated_evaluate(
    grid: Grid,
    nodes: list[int],
    content: RecordDict,
    config: EvalConfig,
    num_items: int,
    timeout: float | None = None,
) -> tuple[dict[str, float], dict[str, object]]:
    """Metrics of the recommender in ``content`` (:func:`evaluation_request`) over every responding client's
    held-out users; and who answered. The caller may drop the recommender itself once ``content`` is built."""
    messages = [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes]
    replies = send_and_receive(grid, messages, timeout)
    contents = [r.content for r in replies if not r.has_error()]
    refused = [c for c in contents if flag(c, wire.REFUSED)]
    answered = [c for c in contents if not flag(c, wire.REFUSED)]
    failed = [
        {"node": reply.node, "reason": reply.error}
        for reply in as_client_replies(replies, messages, timeout or 0.0)
        if reply.content is None
    ] + [{"reason": str(c.config_records[wire.CONFIG][wire.REASON])} for c in refused]
    noisy = [c for c in answered if flag(c, wire.DP_EVALUATION)]
    exact = [c for c in answered if c not in noisy]
    if noisy and exact:
        raise FedsynthError("some nodes evaluated under DP and others exactly; their sums cannot be merged")
    if noisy:
        means, users, std = merge_noisy(noisy)
        who = {"clients": len(noisy), "users": users, "failed": failed, "dp": True, "noise_std_of_mean": std}
        dp_replies = [r for r in replies if not r.has_error() and flag(r.content, wire.DP_EVALUATION)]
        spent = {str(r.metadata.src_node_id): DPEvaluationReply.from_record(r.content) for r in dp_replies}
        return means, {
            **who,
            "epsilon_by_client": {node: s.epsilon for node, s in spent.items()},
            "epsilon_own_noise_by_client": {node: s.epsilon_own_noise for node, s in spent.items()},
            "epsilon_of_evaluations_by_client": {node: s.epsilon_evaluation for node, s in spent.items()},
        }
    merged = merge_evaluations(exact, config, num_items)
    return merged.result(), {"clients": len(exact), "users": merged.users, "failed": failed, "dp": False}
