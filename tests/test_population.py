"""The second benchmark population: a topic model (KL-NMF) fitted to real data, sampled at any size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from fedsynth.common.data.loaders import load_movielens
from fedsynth.common.errors import ConfigError
from fedsynth.simulations.bench.population import (
    dirichlet_by_moments,
    fit_kl_nmf,
    fit_topic_model,
    sample_users,
    write_movielens,
)


def two_topic_users(seed: int = 0) -> sp.csr_matrix:
    """60 users: half hold items 0–9, half items 10–19, each 5 of their block's items."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((60, 20), dtype=np.float32)
    for u in range(60):
        block = 0 if u < 30 else 10
        rows[u, block + rng.choice(10, size=5, replace=False)] = 1.0
    return sp.csr_matrix(rows)


def kl_divergence(x: sp.csr_matrix, w: np.ndarray, h: np.ndarray) -> float:
    approx = w @ h
    dense = x.toarray()
    mask = dense > 0
    return float(np.sum(dense[mask] * np.log(dense[mask] / approx[mask])) - dense.sum() + approx.sum())


def test_the_multiplicative_updates_lower_the_kl_divergence() -> None:
    x = two_topic_users()
    divergences = [kl_divergence(x, *fit_kl_nmf(x, 2, iterations, seed=1)) for iterations in (1, 5, 50)]
    assert divergences[0] > divergences[1] > divergences[2]


def test_the_fitted_topics_separate_the_two_blocks_and_samples_keep_them() -> None:
    x = two_topic_users()
    model = fit_topic_model(x, 2, 100, seed=0)
    assert np.allclose(model.topics.sum(axis=1), 1.0) and (model.alpha > 0).all()
    mass = model.topics[:, :10].sum(axis=1)  # each topic's mass on the first block
    assert sorted(np.round(mass, 1)) == [0.0, 1.0]
    users = sample_users(model, 200, seed=3)
    assert users.shape == (200, 20)
    assert set(np.asarray(users.sum(axis=1)).ravel()) == {5.0}  # lengths drawn from the real ones (all 5)
    first_block = np.asarray(users[:, :10].sum(axis=1)).ravel()
    assert np.mean((first_block == 0) | (first_block == 5)) > 0.8  # users keep to one block mostly, as the data do
    assert 0.25 < np.mean(first_block == 5) < 0.75


def test_dirichlet_moments_recover_the_mean_and_a_known_precision() -> None:
    rng = np.random.default_rng(0)
    alpha = np.array([2.0, 1.0, 1.0])
    estimate = dirichlet_by_moments(rng.dirichlet(alpha, size=20000))
    assert estimate == pytest.approx(alpha, rel=0.1)


def test_the_written_population_loads_as_movielens(tmp_path: Path) -> None:
    users = sample_users(fit_topic_model(two_topic_users(), 2, 20, seed=0), 30, seed=1)
    item_ids = np.arange(100, 120)
    write_movielens(users, item_ids, tmp_path)
    table = load_movielens(tmp_path)
    assert len(table.frame) == users.nnz
    assert set(table.frame["item"].astype(int)) <= set(item_ids.tolist())


def test_more_topics_than_the_data_allow_are_refused_with_the_option() -> None:
    for topics in (0, 21):  # the matrix is 60 × 20: at most 20 topics
        with pytest.raises(ConfigError, match="--topics"):
            fit_kl_nmf(two_topic_users(), topics, 5, seed=0)
    fit_kl_nmf(two_topic_users(), 20, 1, seed=0)
