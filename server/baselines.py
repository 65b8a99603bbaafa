"""The simple DP baselines as comparison rows (simulation: computed by the evaluator, as each client would).

See :mod:`fedsynth.common.recommenders.dp_baselines` for the mechanisms. Each is an *alternative* to the
synthetic pipeline, computed at the run's full target ε per client, so it is not part of the
clients' ledgers: in a deployment no client releases it (the rows exist in simulation only,
like the real-data upper bounds). Their per-client ε is reported next to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedsynth.common.config.run import RunConfig
from fedsynth.common.privacy.releases.cooccurrence import noise_edge
from fedsynth.common.recommenders import MostPopular, Recommender
from fedsynth.common.recommenders.dp_als import dp_als
from fedsynth.common.recommenders.dp_baselines import BaselineRelease, dp_gram, dp_popularity
from fedsynth.common.recommenders.dp_baselines_secure import secure_dp_gram, secure_dp_popularity
from fedsynth.common.recommenders.ease import SubsetEASE


def baseline_recommenders(
    clients: Sequence[sp.csr_matrix], target_epsilon: float, deltas: Sequence[float], config: RunConfig, seed: int
) -> tuple[dict[str, Recommender], dict[str, Any]]:
    """``dp-popularity`` and ``dp-ease`` fitted from the clients' training rows, and their privacy summary.

    ``clients``: each client's binary CSR (n_k, n_items); ``deltas``: each client's δ.
    """
    settings = config.baselines()
    if config.secure_aggregation:  # the same aggregation as the run they are compared with
        threshold = config.threshold_for(len(clients))
        popularity = secure_dp_popularity(clients, target_epsilon, deltas, settings.popularity_clip, threshold)
        gram, counts = secure_dp_gram(clients, target_epsilon, deltas, settings, threshold)
    else:
        popularity = dp_popularity(clients, target_epsilon, deltas, settings.popularity_clip, seed)
        gram, counts = dp_gram(clients, target_epsilon, deltas, settings, seed)
    assert gram.items is not None
    l2 = settings.ease_l2 + noise_edge(gram.noise_std, len(gram.items))
    fallback = counts if counts is not None else np.zeros(clients[0].shape[1])
    als, factors = dp_als(clients, target_epsilon, deltas, config.dp_als(), seed)
    recommenders: dict[str, Recommender] = {
        "dp-popularity": MostPopular.from_counts(popularity.value),
        "dp-ease": SubsetEASE.from_gram(gram.value, gram.items, l2, fallback),
        "dp-als": als,
    }
    summary = {
        "note": "comparison rows: each baseline alone spends the run's target epsilon per client "
        "(an alternative to the synthetic pipeline, not part of its ledgers; simulation only)",
        "secure_aggregation": config.secure_aggregation,
        "dp-popularity": {
            "epsilon_per_client": popularity.epsilon_per_client(),
            "epsilon_own_noise_per_client": popularity.epsilon_own_noise_per_client(),
            "noise_std_of_sum": popularity.noise_std,
            "clip": settings.popularity_clip,
        },
        "dp-ease": {
            "epsilon_per_client": gram.epsilon_per_client(),
            "epsilon_own_noise_per_client": gram.epsilon_own_noise_per_client(),
            "noise_std_of_sum": gram.noise_std,
            "clip": settings.ease_clip,
            "items": len(gram.items),
            "l2": float(l2),
            "selected_by_dp_counts": counts is not None,
        },
        "dp-als": dp_als_summary(factors, config),
    }
    return recommenders, summary


def dp_als_summary(release: BaselineRelease, config: RunConfig) -> dict[str, Any]:
    """DP-ALS's ε per client, the noise std of its summed statistics, its settings and the items it trained."""
    assert release.items is not None
    settings = config.dp_als()
    return {
        "epsilon_per_client": release.epsilon_per_client(),
        "epsilon_own_noise_per_client": release.epsilon_own_noise_per_client(),
        "noise_std_of_sum": release.noise_std,
        "secure_aggregation": False,  # each silo adds its whole noise (see docs/design.md)
        "rank": int(release.value.shape[1]),  # the d used (dp-als-rank 0: from the trained items)
        "iterations": settings.iterations,
        "l2": settings.l2,
        "unobserved_weight": settings.unobserved_weight,
        "items": len(release.items),
    }
