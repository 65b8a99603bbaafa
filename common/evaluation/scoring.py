"""Scoring a recommender on held-out users, batch by batch."""

from __future__ import annotations

from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.split import HeldOutUsers
from fedsynth.common.evaluation.metrics import RankingMetrics
from fedsynth.common.recommenders.base import Recommender


def evaluate(recommender: Recommender, held_out: HeldOutUsers, config: EvalConfig) -> dict[str, float]:
    """Mean Recall/NDCG/HitRate@K and coverage@K of ``recommender`` on ``held_out`` (fold-in → target)."""
    return accumulate(recommender, held_out, config).result()


def accumulate(recommender: Recommender, held_out: HeldOutUsers, config: EvalConfig) -> RankingMetrics:
    """The mergeable metric sums (for federated evaluation, where each client adds its own users)."""
    metrics = RankingMetrics(config.ks, held_out.fold_in.shape[1], targets=config.targets)
    for start in range(0, len(held_out), config.batch_size):
        batch = slice(start, start + config.batch_size)
        fold_in, target = held_out.fold_in[batch], held_out.target[batch]
        metrics.add(recommender.score(fold_in), fold_in, target)
    return metrics
