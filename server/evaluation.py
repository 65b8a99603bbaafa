"""Federated evaluation: send a trained recommender to the clients, merge the metric sums they return.

The server never sees a held-out interaction: each client scores its own held-out users
(fold-in → target) and replies with sums and counts (:class:`common.metrics.RankingMetrics`),
which merge exactly into the metrics a central computation over all those users would give.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import keys
from common.config import EvalConfig
from common.metrics import RankingMetrics
from common.recommenders.base import Recommender
from common.recommenders.transfer import pack
from server.aggregation import as_client_replies
from server.exchange import send_and_receive


def evaluation_request(recommender: Recommender, config: EvalConfig) -> RecordDict:
    """The evaluate message's content for ``recommender``."""
    kind, tensors, settings = pack(recommender)
    request = ConfigRecord(
        {
            "kind": kind,
            "ks": list(config.ks),
            keys.TARGETS: list(config.targets),
            **{keys.SETTING_PREFIX + k: v for k, v in settings.items()},
        }
    )
    return RecordDict({keys.ARRAYS: ArrayRecord(tensors), keys.CONFIG: request})


def merge_evaluations(replies: list[RecordDict], config: EvalConfig, num_items: int) -> RankingMetrics:
    """Sum of the clients' metric accumulators."""
    total = RankingMetrics(config.ks, num_items, targets=config.targets)
    for content in replies:
        total.merge(RankingMetrics.from_numbers(dict(content[keys.METRICS]), config.ks, num_items, config.targets))
    return total


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
    answered = [r.content for r in replies if not r.has_error()]
    failed = [
        {"node": reply.node, "reason": reply.error}
        for reply in as_client_replies(replies, messages, timeout or 0.0)
        if reply.content is None
    ]
    merged = merge_evaluations(answered, config, num_items)
    return merged.result(), {"clients": len(answered), "users": merged.users, "failed": failed}
