"""The DP statistics release: its noise, its ledger entry, its place in the calibrated plan, what it replies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from flwr.app import ConfigRecord, RecordDict

from fedsynth.client.budget import NodeBudget
from fedsynth.client.handlers import handle_statistics, handle_train
from fedsynth.common.config.run import RunConfig
from fedsynth.common.federated import wire
from fedsynth.common.privacy.accounting import DPEvent, epsilon
from fedsynth.common.privacy.ledger import RunIdentity
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.common.privacy.releases.statistics import NoisyStatistics, length_bin_edges, noisy_statistics
from tests.test_federation import SMALL, request, rows


def test_exact_statistics_without_noise_and_clipped_counts() -> None:
    data = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=np.float32))

    released = noisy_statistics(data, clip=1.0, noise_multiplier=0.0, rng=np.random.default_rng(0))

    # Each user's count vector is scaled to L2 norm ≤ 1: lengths 2, 4, 1 → scales 1/√2, 1/2, 1.
    expected = np.array([1 / np.sqrt(2) + 0.5, 1 / np.sqrt(2) + 0.5, 0.5, 0.5 + 1.0])
    np.testing.assert_allclose(released.item_counts, expected)
    edges = length_bin_edges(4)
    assert released.length_histogram.sum() == 3
    assert released.length_histogram[np.searchsorted(edges, 4, side="right") - 1] == 1
    assert released.noise_std == 0.0


def test_noise_has_the_calibrated_scale() -> None:
    data = sp.csr_matrix((np.random.default_rng(1).random((50, 2000)) < 0.05).astype(np.float32))

    released = noisy_statistics(data, clip=4.0, noise_multiplier=2.0, rng=np.random.default_rng(0))
    exact = noisy_statistics(data, clip=4.0, noise_multiplier=0.0, rng=np.random.default_rng(0))

    assert released.noise_std == pytest.approx(2.0 * np.sqrt(17.0))
    assert np.std(released.item_counts - exact.item_counts) == pytest.approx(2.0 * np.sqrt(17.0), rel=0.05)


def test_plan_composes_the_release_and_every_round_within_the_target() -> None:
    config = RunConfig.from_run_config({**SMALL, "num-server-rounds": 3, "epsilon": 3.0})
    plan = plan_privacy(config.privacy(), 200, config.local(), 3)

    events = (
        plan.statistics_events()
        + plan.cooccurrence_events()
        + [DPEvent(e.model, e.noise_multiplier, e.sample_rate, e.steps * 3) for e in plan.round_events()]
    )
    total = epsilon(events, plan.delta)
    assert 2.85 < total <= 3.0 + 1e-3
    assert plan.statistics_events() == [DPEvent("statistics", plan.statistics_noise, 1.0, 1)]


def test_release_is_recorded_in_the_ledger_and_replies_only_noisy_aggregates(tmp_path: Path) -> None:
    config = RunConfig.from_run_config({**SMALL, "num-server-rounds": 2, "epsilon": 4.0})
    data = rows()
    state = RecordDict()
    content = RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: 2})})

    reply = handle_statistics(content, data, config, state, NodeBudget(tmp_path), RunIdentity())

    assert set(reply.keys()) == {wire.ARRAYS, wire.METRICS}
    arrays = reply[wire.ARRAYS].to_torch_state_dict()  # type: ignore[union-attr]
    assert set(arrays) == {wire.ITEM_COUNTS, wire.LENGTH_HISTOGRAM}
    assert arrays[wire.ITEM_COUNTS].shape == (50,)
    metrics = dict(reply[wire.METRICS])  # type: ignore[arg-type]
    assert metrics[wire.EPSILON] == pytest.approx(metrics[wire.EPSILON_STATISTICS])
    assert 0 < metrics[wire.EPSILON] < 4.0
    ledger = json.loads(next(tmp_path.glob("ledger-*.json")).read_text())
    assert ledger["events"][0]["model"] == "statistics" and ledger["history"][0]["round"] == 0

    # Both rounds still fit, and the total after them stays within the target.
    for server_round in (1, 2):
        trained = handle_train(
            request(config, 50, server_round), data, config, state, NodeBudget(tmp_path), RunIdentity()
        )
        assert trained[wire.METRICS][wire.REFUSED] == 0  # type: ignore[index]
    final = trained[wire.METRICS]
    assert final[wire.EPSILON] <= 4.0 + 1e-3  # type: ignore[operator]
    assert final[wire.EPSILON] > max(final[wire.EPSILON_VAE], final[wire.EPSILON_GAN])  # type: ignore[operator, type-var]


def lognormal_histogram(mu: float, sigma: float, users: int, num_items: int) -> np.ndarray:
    lengths = np.clip(np.rint(np.exp(np.random.default_rng(0).normal(mu, sigma, users))), 1, num_items)
    edges = length_bin_edges(num_items)
    return np.bincount(np.searchsorted(edges, lengths, side="right") - 1, minlength=len(edges) - 1).astype(float)


def test_length_fit_recovers_a_lognormal_from_an_exact_histogram() -> None:
    histogram = lognormal_histogram(3.5, 0.8, 5000, 2000)

    fitted = NoisyStatistics(np.ones(2000), histogram).length_sampler(2000)

    assert fitted.mu == pytest.approx(3.5, abs=0.1) and fitted.sigma == pytest.approx(0.8, abs=0.1)


def test_length_fit_stays_sensible_when_noise_swamps_the_histogram() -> None:
    histogram = lognormal_histogram(4.0, 0.7, 500, 6000)  # mean length ~70
    noisy = histogram + np.random.default_rng(1).normal(0.0, 40.0, histogram.shape)

    lengths = NoisyStatistics(np.ones(6000), noisy, 40.0).length_sampler(6000).sample(4000, np.random.default_rng(2))
    naive = np.clip(noisy, 0, None)  # sampling the clipped noisy bins directly: long empty bins get mass
    edges = length_bin_edges(6000)
    naive_mean = float(naive @ ((edges[:-1] + edges[1:]) / 2) / naive.sum())

    assert 35 < lengths.mean() < 140
    assert naive_mean > 3 * lengths.mean()


@pytest.mark.parametrize("reproducible", [False, True])
def test_release_noise_comes_from_the_node_not_from_the_run_seed(tmp_path: Path, reproducible: bool) -> None:
    """The server sends the run config (and its seed): noise derived from it could be subtracted."""
    config = RunConfig.from_run_config({**SMALL, "num-server-rounds": 2, "reproducible-noise": reproducible})
    content = RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: 2})})
    releases = [
        handle_statistics(content, rows(), config, RecordDict(), NodeBudget(tmp_path / str(k)), RunIdentity())
        for k in range(2)
    ]
    counts = [r[wire.ARRAYS].to_torch_state_dict()[wire.ITEM_COUNTS].numpy() for r in releases]  # type: ignore[union-attr]
    assert np.array_equal(counts[0], counts[1]) == reproducible
