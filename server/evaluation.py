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
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.evaluation.metrics import RankingMetrics
from fedsynth.common.federated import wire
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
    request = ConfigRecord(
        {
            "kind": kind,
            "ks": list(config.ks),
            wire.TARGETS: list(config.targets),
            **{wire.SETTING_PREFIX + k: v for k, v in settings.items()},
            **(run or {}),
        }
    )
    return RecordDict({wire.ARRAYS: ArrayRecord(tensors), wire.CONFIG: request})


def merge_evaluations(replies: list[RecordDict], config: EvalConfig, num_items: int) -> RankingMetrics:
    """Sum of the clients' exact metric accumulators."""
    total = RankingMetrics(config.ks, num_items, targets=config.targets)
    for content in replies:
        total.merge(RankingMetrics.from_numbers(dict(content[wire.METRICS]), config.ks, num_items, config.targets))
    return total


def merge_noisy(replies: list[RecordDict]) -> tuple[dict[str, float], float, float]:
    """Σ noisy sums / Σ noisy counts per metric, Σ noisy counts, and the noise std of a mean (≈ √Σ stdₖ² / count)."""
    metrics = [{k: float(v) for k, v in content[wire.METRICS].items()} for content in replies]  # type: ignore[arg-type]
    users = sum(m["users"] for m in metrics)
    names = sorted({k for m in metrics for k in m if k.startswith("sum:")})
    sums = {name[4:]: sum(m[name] for m in metrics) for name in names}
    std = float(np.sqrt(sum(m[wire.NOISE_STD] ** 2 for m in metrics)))
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
        return means, {
            **who,
            "epsilon_by_client": by_node(dp_replies, wire.EPSILON),
            "epsilon_own_noise_by_client": by_node(dp_replies, wire.EPSILON_OWN_NOISE),
            "epsilon_of_evaluations_by_client": by_node(dp_replies, wire.EPSILON_EVALUATION),
        }
    merged = merge_evaluations(exact, config, num_items)
    return merged.result(), {"clients": len(exact), "users": merged.users, "failed": failed, "dp": False}


def flag(content: RecordDict, name: str) -> bool:
    """A 0/1 metric of a reply (absent: 0)."""
    metrics = content.metric_records.get(wire.METRICS)
    return bool(metrics is not None and int(metrics.get(name, 0)))  # type: ignore[arg-type]


def by_node(replies: list[Message], name: str) -> dict[str, float]:
    """Metric ``name`` of each reply, keyed by the replying node."""
    return {str(r.metadata.src_node_id): float(r.content[wire.METRICS][name]) for r in replies}  # type: ignore[arg-type]
