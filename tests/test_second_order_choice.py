"""The co-occurrence only where it can carry structure; otherwise its budget buys the statistics again.

Checked against closed forms (the popularity eigenvalue, inverse-variance weighting by Monte
Carlo), the node's own plan (the predicted noise), the ledger (the same event either way, once),
and the real ClientApp over an in-memory grid, plain and with secure aggregation, including a
resumed run that reads its saved release instead of asking again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedsynth.client.budget import NodeBudget
from fedsynth.client.handlers import handle_cooccurrence, handle_statistics
from fedsynth.common.config.run import SYNTHETIC_EASE_L2_FIRST_ORDER, SYNTHETIC_EASE_L2_PAIRS, RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated import wire
from fedsynth.common.privacy.ledger import RunIdentity
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.common.privacy.releases.clipped_sums import symmetric_noise
from fedsynth.common.privacy.releases.cooccurrence import (
    NoisyCooccurrence,
    marginal_items,
    popularity_eigenvalue,
    second_order_pays,
)
from fedsynth.common.privacy.releases.statistics import NoisyStatistics, statistics_contributions
from fedsynth.server.federation import load_or_query_cooccurrence, predicted_cooccurrence_std
from tests.test_marginals import SMALL, binary
from tests.test_secure_release import InProcessGrid, node_rows

IDENTITY = {wire.RUN_KEY: "k" * 32, wire.REQUESTER: "test"}


def test_the_popularity_eigenvalue_is_the_squared_block_norm_over_all_counts() -> None:
    counts = np.array([10.0, 30.0, -5.0, 60.0])  # a noisy negative count counts as 0

    assert popularity_eigenvalue(counts, np.array([1, 3])) == pytest.approx((30**2 + 60**2) / 100)
    assert popularity_eigenvalue(np.zeros(4), np.array([0, 1])) == 0.0


def test_the_rule_releases_the_cooccurrence_only_above_min_signal_times_the_noise_edge() -> None:
    counts, items = np.array([400.0, 300.0, 200.0, 100.0]), np.arange(4)
    signal = popularity_eigenvalue(counts, items)  # 300
    edge_at = {std: 2 * std * np.sqrt(4) for std in (10.0, 100.0)}  # 40 and 400

    assert second_order_pays(counts, items, 10.0, 0.5) and signal >= 0.5 * edge_at[10.0]
    assert not second_order_pays(counts, items, 100.0, 1.0) and signal < edge_at[100.0]
    assert second_order_pays(counts, items, 100.0, 0.0)  # 0: always
    assert second_order_pays(counts, items, 0.0, 0.5)  # no noise (no DP): always


def test_two_releases_combine_by_inverse_variance_to_the_least_noise() -> None:
    """Monte Carlo against the closed form (1/1² + 1/2²)^(-1/2) = 0.894 for stds 1 and 2."""
    truth, rng = np.linspace(0, 50, 2_000), np.random.default_rng(0)
    first = NoisyStatistics(truth + rng.normal(0, 1.0, 2_000), np.zeros(3), 1.0)
    second = NoisyStatistics(truth + rng.normal(0, 2.0, 2_000), np.zeros(3), 2.0)

    combined = first.combined(second)

    assert combined.noise_std == pytest.approx(0.8944, abs=1e-4)
    assert (combined.item_counts - truth).std() == pytest.approx(0.8944, rel=0.05)
    assert first.combined(NoisyStatistics(truth, np.zeros(3), 0.0)).noise_std == 0.0  # an exact release wins


def test_the_server_predicts_the_noise_each_node_plans() -> None:
    config = RunConfig.from_run_config({**SMALL, "epsilon": 2.0})
    plan = plan_privacy(config.privacy(), 100, config.local(), config.num_server_rounds)

    secure_config = RunConfig.from_run_config({**SMALL, "epsilon": 2.0, "secure-aggregation": True})
    # a secure run's plan is calibrated under RDP (its Skellam events make the ledger an RDP composition)
    secure_plan = plan_privacy(secure_config.privacy(), 100, secure_config.local(), config.num_server_rounds)

    plain = predicted_cooccurrence_std(config, 500.0, 5)
    secure = predicted_cooccurrence_std(secure_config, 500.0, 5)

    assert plain == pytest.approx(plan.cooccurrence_noise * np.sqrt(5))  # each node's own noise, summed
    assert secure == pytest.approx(secure_plan.cooccurrence_noise)  # noise once, on the sum
    assert secure_plan.cooccurrence_noise > plan.cooccurrence_noise  # RDP: more noise for the same ε
    assert predicted_cooccurrence_std(RunConfig.from_run_config({**SMALL, "epsilon": "inf"}), 500.0, 5) == 0.0


def test_a_client_asked_for_the_first_order_instead_pays_the_cooccurrence_event_once(tmp_path: Path) -> None:
    config = RunConfig.from_run_config({**SMALL, "epsilon": 4.0, "num-server-rounds": 2})
    rows, state, run = binary(80, 60, 0.1, 3), RecordDict(), RunIdentity(run_key="r" * 32)
    first = RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: 2})})
    handle_statistics(first, rows, config, state, NodeBudget(tmp_path), run)
    instead = RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: 2, wire.FIRST_ORDER_INSTEAD: 1})})

    reply = handle_cooccurrence(instead, rows, config, state, NodeBudget(tmp_path), run)
    twice = handle_cooccurrence(instead, rows, config, state, NodeBudget(tmp_path), run)

    plan = plan_privacy(config.privacy(), 80, config.local(), 2)
    assert set(reply[wire.ARRAYS].keys()) == {wire.ITEM_COUNTS, wire.LENGTH_HISTOGRAM}  # type: ignore[union-attr]
    clip = config.privacy().statistics_clip
    assert reply[wire.METRICS][wire.NOISE_STD] == pytest.approx(plan.cooccurrence_noise * np.sqrt(clip**2 + 1))  # type: ignore[index]
    assert twice[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    ledger = json.loads(next(tmp_path.glob("ledger-*.json")).read_text())
    assert [e["model"] for e in ledger["events"]] == ["statistics", "cooccurrence"]
    assert ledger["events"][1]["noise_multiplier"] == pytest.approx(plan.cooccurrence_noise)  # the planned event


@pytest.mark.usefixtures("flower_task_identity")
@pytest.mark.parametrize("secure", [False, True])
def test_below_the_noise_the_run_releases_the_statistics_again_and_a_resume_reads_them(
    tmp_path: Path, secure: bool
) -> None:
    """cooccurrence-min-signal far above anything: no co-occurrence; the second release, summed over the
    real ClientApps, has the exact statistics' sum within its stated noise; the combined statistics are
    less noisy than the first; a resumed run reads OUT/cooccurrence.npz and asks no node again."""
    settings = {**SMALL, "epsilon": 2.0, "num-server-rounds": 2, "secure-aggregation": secure,
                "cooccurrence-min-signal": 1e9, "out-dir": str(tmp_path / "out")}  # fmt: skip
    config = RunConfig.from_run_config(settings)
    grid = InProcessGrid(settings, 3, tmp_path)
    rows = node_rows(config, 3)
    exact = sum(np.asarray(statistics_contributions(r, config.statistics_clip).sum(axis=0)).ravel() for r in rows)
    num_items = rows[0].shape[1]
    first = NoisyStatistics(exact[:num_items] + 1.0, exact[num_items:], 5.0)  # stands in for the first release

    statistics, pairs, release_log = load_or_query_cooccurrence(grid, grid.get_node_ids(), config, first, IDENTITY)

    assert pairs is None and release_log is not None and len(release_log.trained) == 3
    assert 0 < statistics.noise_std < first.noise_std
    again_std = (statistics.noise_std**-2 - first.noise_std**-2) ** -0.5
    again = (statistics.item_counts * statistics.noise_std**-2 - first.item_counts * first.noise_std**-2) * again_std**2
    error = again - exact[:num_items]
    assert error.std() == pytest.approx(again_std, rel=0.15)
    for node in range(3):
        ledger = json.loads(next((tmp_path / f"node-{node}").glob("ledger-*.json")).read_text())
        assert [e["model"] for e in ledger["events"]] == ["cooccurrence"]
    sent = len(grid.sent)
    resumed, _, resumed_log = load_or_query_cooccurrence(grid, grid.get_node_ids(), config, first, IDENTITY)
    assert len(grid.sent) == sent and resumed_log is not None and resumed_log.resumed
    assert np.array_equal(resumed.item_counts, statistics.item_counts)


def test_a_negative_min_signal_is_refused_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="cooccurrence-min-signal must be >= 0"):
        RunConfig.from_run_config({"cooccurrence-min-signal": -1.0})


def test_ease_on_synthetic_users_regularises_less_when_they_carry_released_taste_structure() -> None:
    automatic = RunConfig.from_run_config({})
    assert automatic.synthetic_ease_l2 == 0
    assert automatic.synthetic_ease_l2_for(signal_rank=2) == SYNTHETIC_EASE_L2_PAIRS == 1000.0
    for popularity_only in (0, 1):  # nothing released, or only the popularity direction above the noise
        assert automatic.synthetic_ease_l2_for(popularity_only) == SYNTHETIC_EASE_L2_FIRST_ORDER == 3000.0
    chosen = RunConfig.from_run_config({"synthetic-ease-l2": 250.0})
    assert chosen.synthetic_ease_l2_for(5) == chosen.synthetic_ease_l2_for(0) == 250.0
    with pytest.raises(ConfigError, match="synthetic-ease-l2 must be 0 \\(automatic"):
        RunConfig.from_run_config({"synthetic-ease-l2": -1.0})


def test_the_signal_rank_counts_the_directions_above_the_noise_edge() -> None:
    """S = 90 v₁v₁ᵀ + 40 v₂v₂ᵀ + 3 v₃v₃ᵀ + symmetric noise on M = 100 items, stated std 1: edge 2·1·√100 = 20, so
    two directions clear it (popularity and one taste direction); 3 is far below. (The noise drawn has std 0.5,
    its spectrum ending near 10, so no pure-noise direction reaches the edge by chance.)"""
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((100, 3)))
    signal = basis @ np.diag([90.0, 40.0, 3.0]) @ basis.T
    noise = symmetric_noise(100, 0.5, rng)
    released = NoisyCooccurrence(np.arange(100), signal + noise, 1.0)
    assert released.signal_rank() == 2
    assert NoisyCooccurrence(np.arange(100), noise, 1.0).signal_rank() == 0


def test_the_items_stay_the_top_m_by_the_released_counts() -> None:
    assert list(marginal_items(np.array([5.0, 9.0, 1.0, 7.0]), 2)) == [1, 3]


@pytest.mark.usefixtures("flower_task_identity")
def test_saved_releases_are_reused_only_by_a_run_of_the_same_settings(tmp_path: Path) -> None:
    """With the rounds off a run directory holds no checkpoint; its releases carry the settings that made them,
    and a later run (e.g. at another ε through ``flwr run``) is refused before it reads them as its own."""
    from fedsynth.server.federation import RELEASES_CONFIG, check_saved_releases, load_or_query_statistics

    settings = {**SMALL, "epsilon": 2.0, "out-dir": str(tmp_path / "out")}
    config = RunConfig.from_run_config(settings)
    grid = InProcessGrid(settings, 3, tmp_path)
    statistics, _ = load_or_query_statistics(grid, grid.get_node_ids(), config, node_rows(config, 3)[0].shape[1],
                                             IDENTITY)  # fmt: skip
    assert (tmp_path / "out" / RELEASES_CONFIG).is_file()
    check_saved_releases(tmp_path / "out", config)  # the same settings: resumed
    other = RunConfig.from_run_config({**settings, "epsilon": 8.0})
    with pytest.raises(ConfigError, match="other settings"):
        load_or_query_statistics(grid, grid.get_node_ids(), other, len(statistics.item_counts), IDENTITY)
    check_saved_releases(tmp_path / "out", RunConfig.from_run_config({**settings, "reply-timeout": 999.0}))
    with pytest.raises(ConfigError, match="other settings"):  # what is released changed
        check_saved_releases(tmp_path / "out", RunConfig.from_run_config({**settings, "marginal-items": 7}))
