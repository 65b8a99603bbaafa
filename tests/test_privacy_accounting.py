"""Privacy accounting against independent maths: Google's dp-accounting and closed-form edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from common.errors import ConfigError
from common.privacy.accounting import DPEvent, calibrate_noise, epsilon, epsilon_by_model
from common.privacy.crosscheck import crosscheck_ledgers, dp_accounting_epsilon
from common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger, RunIdentity, fingerprint


@pytest.mark.parametrize(
    ("sigma", "rate", "steps", "delta"),
    [(1.0, 0.01, 1000, 1e-5), (1.37, 0.1, 500, 1e-3), (0.8, 0.25, 40, 1e-3), (3.0, 0.3, 200, 1e-4)],
)
def test_epsilon_matches_dp_accounting_within_two_percent(sigma: float, rate: float, steps: int, delta: float) -> None:
    events = [DPEvent("vae", sigma, rate, steps)]

    ours, theirs = epsilon(events, delta), dp_accounting_epsilon(events, delta)

    assert ours == pytest.approx(theirs, rel=0.02)


def test_two_models_compose_in_one_accountant() -> None:
    events = [DPEvent("vae", 1.2, 0.2, 100), DPEvent("gan", 0.9, 0.1, 300), DPEvent("vae", 1.2, 0.2, 100)]

    by_model = epsilon_by_model(events, 1e-4)

    assert by_model["total"] == pytest.approx(dp_accounting_epsilon(events, 1e-4), rel=0.02)
    assert by_model["total"] > max(by_model["vae"], by_model["gan"])
    assert by_model["total"] <= by_model["vae"] + by_model["gan"]  # never worse than basic composition


def test_edge_cases_zero_steps_and_zero_noise() -> None:
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([DPEvent("vae", 1.0, 0.1, 0)], 1e-5) == 0.0
    assert epsilon([DPEvent("vae", 0.0, 0.1, 1)], 1e-5) == math.inf


def test_calibration_meets_the_target_tightly() -> None:
    sigma = calibrate_noise(2.0, 1e-4, 0.05, 400)

    spent = epsilon([DPEvent("vae", sigma, 0.05, 400)], 1e-4)
    assert spent <= 2.0 + 1e-3
    assert spent > 1.95  # not wastefully noisy
    with pytest.raises(ConfigError, match="must be positive"):
        calibrate_noise(0.0, 1e-4, 0.05, 400)


def test_a_share_too_small_for_orders_up_to_63_is_calibrated_with_larger_orders_and_holds_exactly() -> None:
    """ε = 0.03 for one Gaussian release (a 3% share of ε = 1): order 63 alone cannot convert below ~0.07.
    Checked against dp-accounting (its orders reach 1,024) and the exact privacy profile of the Gaussian
    mechanism (Balle & Wang 2018): δ(ε) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ) ≤ the δ asked for."""
    from scipy.stats import norm

    target, delta = 0.03, 1e-4
    sigma = calibrate_noise(target, delta, 1.0, 1)

    assert dp_accounting_epsilon([DPEvent("statistics", sigma, 1.0, 1)], delta) <= target * 1.02
    exact_delta = norm.cdf(0.5 / sigma - target * sigma) - math.exp(target) * norm.cdf(-0.5 / sigma - target * sigma)
    assert exact_delta <= delta
    assert dp_accounting_epsilon([DPEvent("statistics", 0.8 * sigma, 1.0, 1)], delta) > target  # not wasteful


def test_a_plan_with_most_of_a_small_budget_on_the_statistics_composes_to_the_target() -> None:
    """statistics-share 0.9 at ε = 1: the models' parts (0.05 each) calibrate, and the whole plan stays ≤ 1."""
    from common.privacy.dp import PrivacyConfig
    from common.privacy.plan import plan_privacy
    from common.run_config import LocalTrainingConfig

    privacy = PrivacyConfig(target_epsilon=1.0, statistics_share=0.9)
    plan = plan_privacy(privacy, 120, LocalTrainingConfig(), rounds=3)

    composed = epsilon(plan.run_events(True, 3), plan.delta)
    assert 0.9 < composed <= 1.0
    assert dp_accounting_epsilon(list(plan.run_events(True, 3)), plan.delta) <= 1.0 * 1.02


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


def test_ledger_crosscheck_reports_both_accountants(tmp_path: Path) -> None:
    events = [DPEvent("statistics", 2.0, 1.0, 1), DPEvent("vae", 1.1, 0.1, 30), DPEvent("gan", 0.9, 0.1, 10)]
    ledger = PrivacyLedger.open(tmp_path, fingerprint(matrix(0)), 1e-4, None, 10.0)
    ledger.record(events, "round", RunIdentity(), round=1)

    (row,) = crosscheck_ledgers(tmp_path)

    assert row["epsilon_opacus"] == pytest.approx(ledger.spent()["total"])
    assert row["epsilon_dp_accounting"] == pytest.approx(row["epsilon_opacus"], rel=0.02)
    assert row["relative_difference"] < 0.02 and row["steps"] == 41


def test_non_private_events_make_epsilon_infinite_in_both_accountants() -> None:
    events = [DPEvent("vae", 0.0, 0.1, 5)]

    assert epsilon(events, 1e-5) == math.inf and dp_accounting_epsilon(events, 1e-5) == math.inf
