"""A second population for the benchmarks: users sampled from a topic model fitted to real interactions.

    python -m fedsynth.simulations.bench.population --dataset movielens \\
        --data-path ../shared/data/ml-latest-small --users 63000 --out runs/topic-population

then ``--dataset movielens --data-path runs/topic-population`` in ``fedsynth run`` or any bench (e.g.
``python -m fedsynth.simulations.bench.marginals --dataset movielens --data-path runs/topic-population``).

The taste-cluster generator (``dataset generated``) gives each user one of a few clusters. This population
is generated differently: each user mixes several topics learnt from real data, so popularity, lengths and
item co-occurrence follow the real set's, at any number of users.

Model. PLSA as KL-NMF (Hofmann 1999; Lee & Seung 2001): the real binary matrix X (U, I), cleaned as
``fedsynth run`` cleans it, ≈ W H with W (U, K), H (K, I) ≥ 0 minimising the generalised KL divergence
D(X ‖ W H), by the multiplicative updates

    H ← H ∘ (Wᵀ (X ⊘ WH)) ⊘ (Wᵀ 1),      W ← W ∘ ((X ⊘ WH) Hᵀ) ⊘ (1 Hᵀ)

(X ⊘ WH evaluated on X's non-zeros only: X is sparse). The topics are H's rows normalised (β_k, item
distributions), a user's mixture its W row normalised (θ_u). A new user draws θ ~ Dirichlet(α), α = s·m
with m the mean of the real θ_u and the precision s by moments (Minka 2000: the mean over topics of
m_k(1 − m_k)/v_k − 1, v_k the variance of θ_uk), a length ℓ from the real users' lengths, and ℓ distinct
items without replacement from Σ_k θ_k β_k (Gumbel-top-ℓ, as the synthesis samples).

Written as a MovieLens ``ratings.csv`` (rating 5.0, so the implicit threshold keeps every row; item ids are
the source's). Deterministic for ``--seed``. Source data licences apply to what is derived from them: keep
the output out of the repository.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsynth.common.config.run import RunConfig
from fedsynth.common.data.loaders import load_table
from fedsynth.common.data.preprocess import preprocess
from fedsynth.common.errors import ConfigError
from fedsynth.common.synthesis.sampling import draw_items


@dataclass(frozen=True)
class TopicModel:
    """β (K, I) topics (rows sum to 1), α (K,) the Dirichlet of users' mixtures, the real lengths (U,)."""

    topics: np.ndarray
    alpha: np.ndarray
    lengths: np.ndarray


def fit_kl_nmf(matrix: sp.csr_matrix, topics: int, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(W (U, K), H (K, I)) by the multiplicative updates of the module docstring, from a seeded start."""
    if not 1 <= topics <= min(matrix.shape):
        raise ConfigError(f"--topics must be in [1, {min(matrix.shape)}] for a {matrix.shape} matrix, got {topics}")
    rng = np.random.default_rng(seed)
    coo = matrix.tocoo()
    rows, cols, values = coo.row, coo.col, coo.data.astype(np.float64)
    w = rng.uniform(0.5, 1.5, size=(matrix.shape[0], topics))
    h = rng.uniform(0.5, 1.5, size=(topics, matrix.shape[1]))
    for _ in range(iterations):
        ratio = sp.csr_matrix((values / np.einsum("nk,nk->n", w[rows], h[:, cols].T), (rows, cols)), matrix.shape)
        h *= (ratio.T @ w).T / w.sum(axis=0)[:, None]
        ratio = sp.csr_matrix((values / np.einsum("nk,nk->n", w[rows], h[:, cols].T), (rows, cols)), matrix.shape)
        w *= (ratio @ h.T) / h.sum(axis=1)[None, :]
    return w, h


def dirichlet_by_moments(mixtures: np.ndarray) -> np.ndarray:
    """α (K,) whose Dirichlet has the mean of ``mixtures`` (U, K; rows sum to 1) and, on average over the
    topics, their variance (module docstring)."""
    mean, variance = mixtures.mean(axis=0), mixtures.var(axis=0)
    ok = variance > 0
    precision = float(np.mean(mean[ok] * (1.0 - mean[ok]) / variance[ok] - 1.0)) if ok.any() else 1.0
    return np.maximum(mean * max(precision, 1e-3), 1e-6)


def fit_topic_model(matrix: sp.csr_matrix, topics: int, iterations: int, seed: int) -> TopicModel:
    """The population's model fitted to the real binary ``matrix`` (U, I)."""
    w, h = fit_kl_nmf(matrix, topics, iterations, seed)
    beta = h / h.sum(axis=1, keepdims=True)
    scale = w * h.sum(axis=1)[None, :]  # W H = (W diag(Σ_i H_ki)) β: a user's expected items per topic
    mixtures = scale / np.maximum(scale.sum(axis=1, keepdims=True), 1e-300)
    return TopicModel(beta, dirichlet_by_moments(mixtures), np.asarray(matrix.sum(axis=1)).ravel().astype(np.int64))


def sample_users(model: TopicModel, users: int, seed: int, batch: int = 2048) -> sp.csr_matrix:
    """``users`` new users (binary CSR, users × I) from ``model`` (module docstring)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, users, batch):
        count = min(batch, users - start)
        mixtures = rng.dirichlet(model.alpha, size=count)
        lengths = rng.choice(model.lengths, size=count)
        blocks.append(draw_items(mixtures @ model.topics, lengths, 1.0, rng))
    return sp.vstack(blocks).tocsr()


def write_movielens(users: sp.csr_matrix, item_ids: np.ndarray, out: Path) -> Path:
    """``users`` as OUT/ratings.csv (userId from 1, the source's item ids, rating 5.0, a timestamp per row)."""
    coo = users.tocoo()
    frame = pd.DataFrame({"userId": coo.row + 1, "movieId": item_ids[coo.col], "rating": 5.0,
                          "timestamp": np.arange(len(coo.row), dtype=np.int64)})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ratings.csv"
    frame.sort_values(["userId", "movieId"]).to_csv(path, index=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens", help="the real source (a fedsynth dataset name)")
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--users", type=int, default=63000)
    parser.add_argument("--topics", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.users < 1:
        raise SystemExit(f"--users must be at least 1, got {args.users}")
    settings = RunConfig.from_run_config({"dataset": args.dataset, "data-path": args.data_path}).data()
    interactions = preprocess(load_table(settings.data), settings.preprocess)
    model = fit_topic_model(interactions.matrix, args.topics, args.iterations, args.seed)
    users = sample_users(model, args.users, args.seed + 1)
    path = write_movielens(users, np.asarray(interactions.item_ids), args.out)
    real = interactions.matrix
    print(f"{path}: {users.shape[0]:,} users x {users.shape[1]:,} items, {users.nnz:,} interactions "
          f"(source {real.shape[0]:,} users, {real.nnz:,}; {args.topics} topics, Dirichlet precision "
          f"{model.alpha.sum():.3g})")  # fmt: skip


if __name__ == "__main__":
    main()
