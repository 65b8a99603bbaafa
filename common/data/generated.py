"""The built-in generated dataset: realistic-shaped ratings with no files needed.

Deterministic from ``GeneratedDataConfig.seed``. The shape follows what real
interaction data shows:

* long-tailed item popularity (Zipf-like base rates, exponent 1.3);
* clustered tastes: each user belongs to one of ``num_clusters`` taste clusters, a point
  in a 16-dimensional latent space; items are points in the same space and a user's
  choice probability is ``popularity_i · exp(affinity(user, item))``;
* varied history lengths: ``min_history`` plus a log-normal tail with mean ``mean_history``;
* ratings 1–5 that rise with affinity (about 55% are >= 4, as in MovieLens-100K), and
  increasing timestamps per user;
* a ``region`` user attribute correlated with the taste cluster (80% follow it), and the
  true ``taste`` cluster, for natural and Dirichlet partitions.

Defaults are sized like MovieLens-100K (943 users, 1,682 items, about 100,000 ratings).
Items are drawn without replacement with the Gumbel-top-k trick, in chunks of users, so
memory stays at ``chunk × num_items`` whatever the number of users.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedsynth.common.config.sections import GeneratedDataConfig
from fedsynth.common.data.cleaning_report import CleaningReport
from fedsynth.common.data.table import TABLE_COLUMNS, InteractionTable
from fedsynth.common.runtime.seeding import rng_for

_LATENT_DIM = 16
_CHUNK_USERS = 1024
_START_TIME = 874_724_710.0  # first ML-100K timestamp (1997-09-20)


def generate_table(config: GeneratedDataConfig) -> InteractionTable:
    """Generate the interaction table described in the module docstring."""
    rng = rng_for(config.seed, "generated")
    n_users, n_items = config.num_users, config.num_items

    ranks = rng.permutation(n_items)
    log_popularity = -1.3 * np.log(ranks + 5.0)  # Zipf-like, shuffled over item ids
    item_factors = rng.normal(size=(n_items, _LATENT_DIM))
    centers = rng.normal(size=(config.num_clusters, _LATENT_DIM)) * 1.2
    cluster_share = rng.dirichlet(np.full(config.num_clusters, 2.0))
    clusters = rng.choice(config.num_clusters, size=n_users, p=cluster_share)
    user_factors = centers[clusters] + 0.6 * rng.normal(size=(n_users, _LATENT_DIM))

    tail_mean = config.mean_history - config.min_history
    sigma = 1.0
    lengths = config.min_history + rng.lognormal(np.log(max(tail_mean, 1e-9)) - sigma**2 / 2, sigma, size=n_users)
    lengths = np.clip(np.round(lengths), config.min_history, max(config.min_history, int(0.45 * n_items))).astype(
        np.int64
    )

    users_out, items_out, ratings_out = [], [], []
    scale = 1.0 / np.sqrt(_LATENT_DIM)
    for start in range(0, n_users, _CHUNK_USERS):
        stop = min(start + _CHUNK_USERS, n_users)
        affinity = (user_factors[start:stop] @ item_factors.T) * scale  # (chunk, items)
        keys = log_popularity + 1.0 * affinity + rng.gumbel(size=affinity.shape)
        for row, user in enumerate(range(start, stop)):
            k = int(lengths[user])
            chosen = np.argpartition(-keys[row], k - 1)[:k]
            a = affinity[row, chosen]
            z = (a - a.mean()) / (a.std() + 1e-9)
            rating = np.clip(np.round(3.6 + 0.9 * z + 0.6 * rng.normal(size=k)), 1, 5)
            users_out.append(np.full(k, user + 1, dtype=np.int64))
            items_out.append(chosen.astype(np.int64) + 1)
            ratings_out.append(rating)

    users = np.concatenate(users_out)
    counts = np.asarray(lengths, dtype=np.int64)
    starts = _START_TIME + rng.uniform(0, 2e7, size=n_users)
    gaps = rng.exponential(3600.0, size=len(users))
    elapsed = np.cumsum(gaps)
    first = np.cumsum(counts) - counts  # index of each user's first row
    offsets = elapsed - np.repeat(elapsed[first] - gaps[first], counts)  # per-user running time
    timestamps = np.floor(np.repeat(starts, counts) + offsets)

    frame = pd.DataFrame(
        {
            "user": users,
            "item": np.concatenate(items_out),
            "value": np.concatenate(ratings_out).astype(np.float64),
            "timestamp": timestamps.astype(np.float64),
        },
        columns=list(TABLE_COLUMNS),
    )
    follows = rng.random(n_users) < 0.8
    region = np.where(follows, clusters % config.num_regions, rng.integers(0, config.num_regions, n_users))
    attributes = pd.DataFrame(
        {"region": [f"r{r}" for r in region], "taste": [f"t{c}" for c in clusters]},
        index=pd.Index(np.arange(1, n_users + 1, dtype=np.int64), name="user"),
    )
    report = CleaningReport(
        source=(
            f"generated (seed {config.seed}: {n_users:,} users, {n_items:,} items, "
            f"{config.num_clusters} taste clusters)"
        )
    )
    report.add("rows generated", len(frame), len(frame))
    return InteractionTable(frame, "rating", report, attributes)
