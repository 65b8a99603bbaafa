"""Privacy accounting against independent maths: Google's dp-accounting and closed-form edge cases."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.accounting import (
    ACCOUNTANT,
    FAST_ORDERS,
    PLD_INTERVAL,
    PLD_NAME,
    RDP_NAME,
    DPEvent,
    accountant_for,
    accountant_name,
    calibrate_noise,
    epsilon,
    epsilon_by_model,
    epsilon_pld,
    epsilon_rdp,
)
from fedsynth.common.privacy.crosscheck import crosscheck_ledgers, dp_accounting_epsilon
from fedsynth.common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger, RunIdentity, fingerprint
from fedsynth.common.secagg.skellam import SkellamEvent

HISTORY = [DPEvent("statistics", 2.0, 1.0, 1), DPEvent("vae", 1.1, 0.1, 30), DPEvent("gan", 0.9, 0.1, 10)]


def independent_pld_epsilon(events: list[DPEvent], delta: float) -> float:
    """dp-accounting's PLDAccountant on the events as listed: one ComposedDpEvent of SelfComposedDpEvents."""
    import dp_accounting

    composed = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)),
                e.steps,
            )
            for e in events
        ]
    )
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    accountant.compose(composed)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(
    ("events", "delta"),
    [
        ([DPEvent("vae", 1.0, 0.01, 1000)], 1e-5),
        ([DPEvent("vae", 1.37, 0.1, 500)], 1e-3),
        ([DPEvent("vae", 0.8, 0.25, 40)], 1e-3),
        ([DPEvent("statistics", 2.0, 1.0, 1)], 1e-5),  # q = 1: one Gaussian release
        ([DPEvent("statistics", 2.0, 1.0, 5)], 1e-5),  # q = 1, five releases: one Gaussian at σ/√5 here
        ([*HISTORY, DPEvent("vae", 1.1, 0.1, 30)], 1e-4),  # a ledger: the two VAE rounds are merged here
    ],
)
def test_pld_epsilon_equals_an_independent_dp_accounting_pld_computation(events: list[DPEvent], delta: float) -> None:
    assert ACCOUNTANT == "pld" and accountant_for(events) == "pld" and accountant_name(events) == PLD_NAME

    assert epsilon(events, delta) == pytest.approx(independent_pld_epsilon(events, delta), rel=1e-6)
    assert epsilon(events, delta) == epsilon_pld(events, delta) == epsilon(events, delta, accountant="pld")


@pytest.mark.parametrize(
    ("sigma", "rate", "steps", "delta"),
    [(1.0, 0.01, 1000, 1e-5), (1.37, 0.1, 500, 1e-3), (0.8, 0.25, 40, 1e-3), (3.0, 0.3, 200, 1e-4)],
)
def test_rdp_epsilon_matches_dp_accounting_rdp_within_two_percent(
    sigma: float, rate: float, steps: int, delta: float
) -> None:
    events = [DPEvent("vae", sigma, rate, steps)]

    ours, theirs = epsilon(events, delta, accountant="rdp"), dp_accounting_epsilon(events, delta)

    assert ours == epsilon_rdp(events, delta) == pytest.approx(theirs, rel=0.02)


@pytest.mark.parametrize(
    ("events", "delta"),
    [
        ([DPEvent("vae", 1.0, 0.01, 1000)], 1e-5),
        ([DPEvent("vae", 0.8, 0.25, 40)], 1e-3),
        ([DPEvent("statistics", 2.0, 1.0, 1)], 1e-5),
        (HISTORY, 1e-4),
        ([DPEvent("statistics", 1.6, 1.0, 1), DPEvent("vae", 2.7, 1 / 3, 9), DPEvent("gan", 4.6, 1 / 3, 30)], 7e-4),
    ],
)
def test_pld_is_below_rdp_on_the_same_events_by_at_most_twenty_percent(events: list[DPEvent], delta: float) -> None:
    pld, rdp = epsilon(events, delta), epsilon_rdp(events, delta)

    assert 0.8 * rdp <= pld < rdp


def test_the_worked_example_q_one_quarter_sigma_one_twenty_steps() -> None:
    events = [DPEvent("vae", 1.0, 0.25, 20)]

    assert epsilon_rdp(events, 1e-5) == pytest.approx(9.09, abs=0.01)  # Opacus' orders
    assert dp_accounting_epsilon(events, 1e-5) == pytest.approx(9.10, abs=0.01)  # dp-accounting's RDP orders
    assert epsilon(events, 1e-5) == pytest.approx(8.08, abs=0.01)


@pytest.mark.parametrize(
    ("events", "delta", "finer"),
    [
        ([DPEvent("vae", 1.0, 0.01, 1000)], 1e-5, PLD_INTERVAL / 5),
        ([DPEvent("vae", 1.0, 0.03, 300)], 1e-4, PLD_INTERVAL / 5),
        ([DPEvent("vae", 3.2, 0.0064, 471)], 1e-5, PLD_INTERVAL / 100),  # ε = 0.14: the grid refined below ε = 1
        ([DPEvent("statistics", 100.0, 1.0, 1)], 1e-5, PLD_INTERVAL / 100),  # ε = 0.03
    ],
)
def test_the_pld_grid_is_within_one_percent_of_a_finer_one_and_never_below_it(
    events: list[DPEvent], delta: float, finer: float
) -> None:
    """The pessimistic estimate only rounds losses up: a finer grid gives a smaller, valid, ε."""
    ours, tighter = epsilon(events, delta), epsilon_pld(events, delta, interval=finer)

    assert tighter <= ours <= tighter * 1.01
    assert ours <= epsilon_pld(events, delta, interval=PLD_INTERVAL)


def test_two_models_compose_in_one_accountant() -> None:
    events = [DPEvent("vae", 1.2, 0.2, 100), DPEvent("gan", 0.9, 0.1, 300), DPEvent("vae", 1.2, 0.2, 100)]

    by_model = epsilon_by_model(events, 1e-4)

    assert by_model["total"] == pytest.approx(independent_pld_epsilon(events, 1e-4), rel=1e-6)
    assert by_model["total"] > max(by_model["vae"], by_model["gan"])
    assert by_model["total"] <= by_model["vae"] + by_model["gan"]  # never worse than basic composition


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_edge_cases_zero_steps_and_zero_noise(accountant: Literal["pld", "rdp"]) -> None:
    assert epsilon([], 1e-5, accountant=accountant) == 0.0
    assert epsilon([DPEvent("vae", 1.0, 0.1, 0)], 1e-5, accountant=accountant) == 0.0
    assert epsilon([DPEvent("vae", 0.0, 0.1, 1)], 1e-5, accountant=accountant) == math.inf
    assert epsilon([DPEvent("vae", 0.0, 1.0, 1), *HISTORY], 1e-5, accountant=accountant) == math.inf


def test_a_history_with_a_skellam_event_is_composed_whole_by_rdp() -> None:
    """PLD cannot express the Skellam mechanism: its RDP bound is composed with the Gaussian events' RDP."""
    skellam = SkellamEvent("statistics", 4e8, 4100.0, 4100.0)
    events = [skellam, *HISTORY[1:]]

    assert accountant_for(events) == "rdp" and accountant_name(events) == RDP_NAME
    assert epsilon(events, 1e-4) == epsilon_rdp(events, 1e-4) > epsilon_rdp(HISTORY[1:], 1e-4)
    assert accountant_name([SkellamEvent("statistics", 4e8, 4100.0, 4100.0, steps=0), *HISTORY]) == PLD_NAME
    with pytest.raises(ValueError, match="cannot compose Skellam"):
        epsilon(events, 1e-4, accountant="pld")


def test_rdp_callers_passing_orders_get_rdp_at_those_orders() -> None:
    assert epsilon(HISTORY, 1e-4, FAST_ORDERS) == epsilon_rdp(HISTORY, 1e-4, FAST_ORDERS)
    assert epsilon(HISTORY, 1e-4, FAST_ORDERS) >= epsilon_rdp(HISTORY, 1e-4)  # fewer orders: never tighter
    with pytest.raises(ValueError, match="orders"):
        epsilon(HISTORY, 1e-4, FAST_ORDERS, accountant="pld")


@pytest.mark.parametrize(
    ("target", "delta", "rate", "steps"),
    [(2.0, 1e-4, 0.05, 400), (8.0, 7e-4, 1 / 3, 30), (1.0, 1e-5, 1.0, 1), (0.5, 1e-5, 0.01, 300)],
)
def test_calibration_meets_the_target_tightly_under_the_reporting_accountant(
    target: float, delta: float, rate: float, steps: int
) -> None:
    sigma = calibrate_noise(target, delta, rate, steps)

    spent = epsilon([DPEvent("vae", sigma, rate, steps)], delta)
    assert target * (1 - 1e-3) <= spent <= target  # within 0.1%, never above
    assert sigma < calibrate_noise(target, delta, rate, steps, accountant="rdp")  # the same ε buys less noise
    assert calibrate_noise(target, delta, rate, steps, guess=2 * sigma) == pytest.approx(sigma, rel=2e-3)
    with pytest.raises(ConfigError, match="must be positive"):
        calibrate_noise(0.0, delta, rate, steps)


def test_rdp_calibration_meets_the_target_under_rdp() -> None:
    sigma = calibrate_noise(2.0, 1e-4, 0.05, 400, accountant="rdp")

    spent = epsilon_rdp([DPEvent("vae", sigma, 0.05, 400)], 1e-4)
    assert 1.95 < spent <= 2.0 + 1e-3


def test_a_small_share_of_one_gaussian_release_is_calibrated_and_holds_exactly() -> None:
    """ε = 0.03 for one Gaussian release (a 3% share of ε = 1). Checked against dp-accounting's PLDAccountant and
    the exact privacy profile of the Gaussian mechanism (Balle & Wang 2018):
    δ(ε) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ) ≤ the δ asked for. Under RDP, order 63 alone cannot convert below
    ~0.07: the RDP calibration adds larger orders."""
    from scipy.stats import norm

    target, delta = 0.03, 1e-4
    accountants: list[Literal["pld", "rdp"]] = ["pld", "rdp"]
    for accountant in accountants:
        sigma = calibrate_noise(target, delta, 1.0, 1, accountant=accountant)

        assert dp_accounting_epsilon([DPEvent("statistics", sigma, 1.0, 1)], delta, accountant) <= target * 1.02
        exact_delta = norm.cdf(0.5 / sigma - target * sigma) - math.exp(target) * norm.cdf(
            -0.5 / sigma - sigma * target
        )
        assert exact_delta <= delta
        assert dp_accounting_epsilon([DPEvent("statistics", 0.8 * sigma, 1.0, 1)], delta, accountant) > target


def test_a_plan_with_most_of_a_small_budget_on_the_statistics_composes_to_the_target() -> None:
    """statistics-share 0.9 at ε = 1: the models' parts (0.05 each) calibrate, and the whole plan stays ≤ 1."""
    from fedsynth.common.config.run import LocalTrainingConfig
    from fedsynth.common.privacy.dpsgd.training import PrivacyConfig
    from fedsynth.common.privacy.plan import plan_privacy

    privacy = PrivacyConfig(target_epsilon=1.0, statistics_share=0.9)
    plan = plan_privacy(privacy, 120, LocalTrainingConfig(), rounds=3)

    composed = epsilon(plan.run_events(True, 3), plan.delta)
    assert 0.99 < composed <= 1.0
    assert independent_pld_epsilon(list(plan.run_events(True, 3)), plan.delta) <= 1.0 * 1.002  # its grid: 1e-3


@pytest.mark.parametrize(("target", "users"), [(1.0, 132), (8.0, 132), (8.0, 2000)])
def test_the_default_plan_composes_to_its_target_under_pld_and_less_noise_than_under_rdp(
    target: float, users: int
) -> None:
    """The defaults of pyproject.toml (co-occurrence release, GAN, 3 rounds): ≤ target and within 0.2% of it."""
    from dataclasses import replace

    from fedsynth.common.config.run import RunConfig
    from fedsynth.common.privacy.plan import plan_privacy

    config = replace(RunConfig(), epsilon=target)
    plan = plan_privacy(config.privacy(), users, config.local(), config.num_server_rounds)

    events = plan.run_events(True, config.num_server_rounds)
    assert target * (1 - 2e-3) <= epsilon(events, plan.delta) <= target
    assert epsilon_rdp(events, plan.delta) > target  # RDP would have asked for more noise
    assert plan_privacy(config.privacy(), users, config.local(), config.num_server_rounds) == plan  # deterministic


def test_a_secure_run_is_planned_under_rdp_the_accountant_of_its_skellam_events() -> None:
    from dataclasses import replace

    from fedsynth.common.config.run import RunConfig
    from fedsynth.common.privacy.plan import plan_privacy

    config = replace(RunConfig(), epsilon=4.0, secure_aggregation=True)
    plan = plan_privacy(config.privacy(), 132, config.local(), config.num_server_rounds)

    events = plan.run_events(True, config.num_server_rounds)
    assert 4.0 * (1 - 2e-3) <= epsilon(events, plan.delta, FAST_ORDERS) <= 4.0  # RDP at the orders 2-63
    assert epsilon(events, plan.delta) < epsilon_rdp(events, plan.delta) <= 4.0
    assert plan == plan_privacy(config.privacy(), 132, config.local(), config.num_server_rounds, accountant="rdp")


def matrix(seed: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.random.default_rng(seed).random((20, 30)) < 0.2).astype(np.float32))


def test_ledger_survives_reopening_and_refuses_over_budget(tmp_path: Path) -> None:
    print_ = fingerprint(matrix(0))
    ledger = PrivacyLedger.open(tmp_path, print_, 1e-3, None, first_request=3.0)
    sigma = calibrate_noise(1.5, 1e-3, 0.2, 50)
    round_events = [DPEvent("vae", sigma, 0.2, 50)]
    ledger.check(round_events)
    ledger.record(round_events, "round", RunIdentity(), round=1)

    reopened = PrivacyLedger.open(tmp_path, print_, 1e-3, None, first_request=3.0)

    assert reopened.events == round_events
    assert reopened.spent()["total"] == pytest.approx(ledger.spent()["total"])
    reopened.check(round_events)  # a second round still fits in 3.0
    reopened.record(round_events, "round", RunIdentity(), round=2)
    with pytest.raises(PrivacyBudgetExceeded, match="above this silo's cap 3"):
        reopened.check(round_events * 3)


def test_ledger_is_keyed_by_data_and_keeps_its_delta(tmp_path: Path) -> None:
    first = PrivacyLedger.open(tmp_path, fingerprint(matrix(0)), 1e-3, None, 3.0)
    first.record([DPEvent("vae", 1.0, 0.1, 10)], "round", RunIdentity(), round=1)

    other_data = PrivacyLedger.open(tmp_path, fingerprint(matrix(1)), 1e-3, None, 3.0)
    assert other_data.events == []
    with pytest.raises(ConfigError, match="Use the same delta"):
        PrivacyLedger.open(tmp_path, fingerprint(matrix(0)), 1e-4, None, 3.0)


def test_fingerprint_depends_on_the_pattern_not_the_object() -> None:
    a = matrix(0)
    assert fingerprint(a) == fingerprint(a.copy())
    assert fingerprint(a) != fingerprint(matrix(1))


def test_ledger_crosscheck_reports_the_epsilon_reported_and_both_rdp_accountants(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, fingerprint(matrix(0)), 1e-4, None, 10.0)
    ledger.record(HISTORY, "round", RunIdentity(), round=1)

    (row,) = crosscheck_ledgers(tmp_path)

    assert row["epsilon"] == pytest.approx(ledger.spent()["total"]) and row["accountant"] == PLD_NAME
    assert row["epsilon"] < row["epsilon_opacus"] == pytest.approx(epsilon_rdp(HISTORY, 1e-4))
    assert row["epsilon_dp_accounting"] == pytest.approx(row["epsilon_opacus"], rel=0.02)
    assert row["relative_difference"] < 0.02 and row["steps"] == 41


def test_non_private_events_make_epsilon_infinite_in_every_accountant() -> None:
    events = [DPEvent("vae", 0.0, 0.1, 5)]

    assert epsilon(events, 1e-5) == math.inf and dp_accounting_epsilon(events, 1e-5) == math.inf
    assert dp_accounting_epsilon(events, 1e-5, "pld") == math.inf
