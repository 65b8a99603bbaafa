"""Settings whose default (0) is chosen from public information: the synthetic users from the silos' size, the
marginal fit's steps from the co-occurrence release's signal ratio."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.settings import AUTO_SYNTHETIC_USERS
from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.releases.statistics import NoisyStatistics


@pytest.mark.parametrize("users,expected", [(650.0, 2000), (6300.4, 6300), (63000.0, 30000), (-5.0, 2000)])
def test_automatic_synthetic_users_follow_the_silos_users_within_the_range(users: float, expected: int) -> None:
    config = RunConfig.from_run_config({})
    assert config.synthetic_users == 0 and AUTO_SYNTHETIC_USERS == (2000, 30000)
    assert config.synthetic_users_for(users) == expected
    assert config.synthesis(users).num_users == expected


def test_a_given_number_of_synthetic_users_is_kept_whatever_the_silos() -> None:
    config = RunConfig.from_run_config({"synthetic-users": 120})
    assert config.synthetic_users_for(63000.0) == 120


def test_the_users_come_from_the_released_length_histogram_never_below_zero() -> None:
    statistics = NoisyStatistics(np.zeros(5), np.array([3.0, 4.5, -1.0]), 1.0)
    assert statistics.users() == pytest.approx(6.5)
    assert NoisyStatistics(np.zeros(5), np.array([-3.0, 1.0]), 1.0).users() == 0.0


def test_negative_synthetic_users_are_refused() -> None:
    with pytest.raises(ConfigError, match="synthetic-users"):
        RunConfig.from_run_config({"synthetic-users": -1})


def test_no_rounds_gives_the_models_share_to_the_releases_and_spends_the_target() -> None:
    from fedsynth.common.privacy.accounting import epsilon
    from fedsynth.common.privacy.plan import plan_privacy

    plans = {}
    for rounds in (0, 3):
        config = RunConfig.from_run_config({"num-server-rounds": rounds, "epsilon": 4.0})
        plans[rounds] = plan = plan_privacy(config.privacy(), 200, config.local(), rounds)
        assert epsilon(plan.run_events(True, rounds), plan.delta) == pytest.approx(4.0, rel=3e-3)
    assert plans[0].vae_noise == 0.0 and plans[0].gan_noise == 0.0  # nothing planned for models that never train
    assert plans[0].statistics_noise < plans[3].statistics_noise
    assert plans[0].cooccurrence_noise < plans[3].cooccurrence_noise


def test_the_privacy_summary_says_whether_the_rounds_ran() -> None:
    from fedsynth.server.privacy_summary import training_stage

    assert training_stage(RunConfig.from_run_config({"num-server-rounds": 0}))["statistics_share"] == 1.0
    assert RunConfig.from_run_config({}).num_server_rounds == 0  # the default: the rounds did not pay
    stage = training_stage(RunConfig.from_run_config({"num-server-rounds": 3}))
    assert stage["rounds"] == 3 and stage["statistics_share"] == 0.8


def test_update_attacks_and_fedsgd_need_rounds() -> None:
    with pytest.raises(ConfigError, match="attack scaled-update tampers with model updates, and num-server-rounds 0"):
        RunConfig.from_run_config({"attack": "scaled-update"})
    with pytest.raises(ConfigError, match="num-server-rounds of at least 1"):
        RunConfig.from_run_config({"round-mode": "fedsgd", "secure-aggregation": True, "synthesizers": "vae"})


def test_a_node_refuses_to_train_with_a_plan_made_for_no_rounds() -> None:
    import scipy.sparse as sp
    from flwr.app import ArrayRecord

    from fedsynth.client.round import local_training
    from fedsynth.common.errors import FedsynthError
    from fedsynth.common.federated.protocol import TrainRequest
    from fedsynth.common.privacy.plan import plan_privacy

    config = RunConfig.from_run_config({"num-server-rounds": 0})
    plan = plan_privacy(config.privacy(), 100, config.local(), 0)  # no rounds: no DP-SGD noise planned
    assert plan.private and plan.vae_noise == 0.0
    request = TrainRequest(1, 1, ArrayRecord({}))
    with pytest.raises(FedsynthError, match="has no DP-SGD noise"):
        local_training(request, sp.csr_matrix((100, 300)), config, plan)


def test_the_signal_ratio_is_the_predicted_popularity_eigenvalue_over_the_noise_edge() -> None:
    from fedsynth.common.privacy.releases.cooccurrence import signal_ratio

    counts, items = np.array([30.0, 40.0, 10.0, 20.0]), np.array([0, 1])
    # λ̂ = (30² + 40²) / 100 = 25; edge = 2σ√M = 2 · 0.5 · √2
    assert signal_ratio(counts, items, 0.5) == pytest.approx(25.0 / np.sqrt(2.0))
    assert signal_ratio(counts, items, 0.0) == float("inf")  # no noise (non-private studies): the long fit
    assert np.isnan(signal_ratio(counts, items, float("nan"))) and np.isnan(signal_ratio(counts, items, -1.0))


@pytest.mark.parametrize("ratio,steps", [(0.0, 300), (0.8, 300), (3.99, 300), (4.0, 1000), (44.0, 1000)])
def test_automatic_fit_steps_grow_with_the_release_s_signal(ratio: float, steps: int) -> None:
    config = RunConfig.from_run_config({})
    assert config.marginal_fit_steps == 0
    assert config.marginal_fit(ratio).steps == steps


def test_given_fit_steps_are_kept_and_negative_ones_refused() -> None:
    assert RunConfig.from_run_config({"marginal-fit-steps": 20}).marginal_fit(44.0).steps == 20
    with pytest.raises(ConfigError, match="marginal-fit-steps"):
        RunConfig.from_run_config({"marginal-fit-steps": -1})


def test_the_server_fits_as_long_as_the_released_noise_allows() -> None:
    from fedsynth.common.privacy.releases.cooccurrence import NoisyCooccurrence
    from fedsynth.server.federation import fit_settings

    config = RunConfig.from_run_config({})
    counts = np.array([300.0, 200.0, 100.0, 50.0])
    statistics = NoisyStatistics(counts, np.array([10.0, 5.0]), 1.0)
    items = np.array([0, 1, 2])
    quiet = NoisyCooccurrence(items, np.eye(3), noise_std=1.0)  # λ̂ = 140,000 / 650 ≈ 215: 62 noise edges of 2√3
    loud = NoisyCooccurrence(items, np.eye(3), noise_std=30.0)  # 2.1
    assert fit_settings(config, statistics, quiet).steps == 1000
    assert fit_settings(config, statistics, loud).steps == 300


def test_with_the_rounds_off_the_fitted_start_is_scored_once() -> None:
    from fedsynth.server.pipeline import fitted_labels

    assert fitted_labels(RunConfig.from_run_config({})) == ["synthetic", "synthetic-gan"]
    assert fitted_labels(RunConfig.from_run_config({"synthesizers": "vae"})) == ["synthetic", "synthetic-fitted-gan"]
    rounds = RunConfig.from_run_config({"num-server-rounds": 3})
    assert fitted_labels(rounds) == ["synthetic-fitted-vae", "synthetic-fitted-gan"]


def test_the_dcr_reads_a_fixed_sample_of_at_most_2000_users() -> None:
    import scipy.sparse as sp

    from fedsynth.common.evaluation.fidelity import DCR_SAMPLE, dcr_sample

    many = sp.random(5000, 30, density=0.2, format="csr", random_state=0)
    sample = dcr_sample(many)
    assert sample.shape == (DCR_SAMPLE, 30) and DCR_SAMPLE == 2000
    assert (dcr_sample(many) != sample).nnz == 0  # the same rows every time
    few = many[:10]
    assert dcr_sample(few) is few


def test_the_evaluated_rows_count_the_fitted_start_once_with_the_rounds_off() -> None:
    base = {"recommenders": "popularity,ease", "simulation-reference": False}
    off = RunConfig.from_run_config(base)  # vae, gan: the fitted start is their own rows
    on = RunConfig.from_run_config({**base, "num-server-rounds": 3})
    vae_only = RunConfig.from_run_config({**base, "synthesizers": "vae"})  # + synthetic-fitted-gan
    assert off.evaluation_rows() == 2 * 2 + 2
    assert on.evaluation_rows() == 4 * 2 + 2
    assert vae_only.evaluation_rows() == 2 * 2 + 2
