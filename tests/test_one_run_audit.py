"""The one-run audit (Steinke, Nasr, Jagielski 2023): its bound, and the DP releases audited with it.

The maths against exact rational arithmetic and a brute-force enumeration of a mechanism's outcomes; the
project's releases at their real privacy plans stay below their accounted ε; each deliberately broken
variant goes above it; the command on a small case. Everything is seeded, so every number is fixed.
"""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.one_run_audit import (
    audit_scores,
    count_correct,
    epsilon_lower_bound,
    fixed_guesses,
    guess,
    p_value,
)
from fedsynth.simulations.cli import cli
from fedsynth.simulations.experiments.mechanism_audit import BROKEN, RELEASES, ReleaseAudit, audit_release

# ---------------------------------------------------------------------------------------------- the maths


def exact_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """f_ε(v) in exact rational arithmetic (p rounded to a Fraction once), straight from the definition."""
    p = Fraction(1) / (1 + Fraction(math.exp(-eps)))
    pmf = [math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(r + 1)]
    tail = sum(pmf[v:], Fraction(0))
    alpha = max((sum(pmf[v - i : v], Fraction(0)) / i for i in range(1, v + 1)), default=Fraction(0))
    return float(min(Fraction(1), tail + 2 * m * Fraction(delta) * alpha))


@pytest.mark.parametrize("m, r, v", [(10, 10, 8), (20, 12, 12), (30, 6, 4), (40, 40, 25), (8, 8, 0)])
@pytest.mark.parametrize("eps, delta", [(0.0, 0.0), (0.7, 0.0), (2.0, 1e-3), (5.0, 1e-5)])
def test_p_value_matches_exact_rational_arithmetic(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(exact_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def brute_p_values(m: int, r: int, v: int, grid: np.ndarray, delta: float) -> np.ndarray:
    """f_ε(v) on a grid of ε by brute force: every binomial probability from log-factorials, every window summed."""
    k = np.arange(r + 1)
    log_choose = np.array([math.lgamma(r + 1) - math.lgamma(j + 1) - math.lgamma(r - j + 1) for j in k])
    p = 1.0 / (1.0 + np.exp(-grid))
    with np.errstate(divide="ignore"):
        pmf = np.exp(log_choose[:, None] + np.outer(k, np.log(p)) + np.outer(r - k, np.log1p(-p)))
    tail = pmf[v:].sum(axis=0)
    windows = [pmf[v - i : v].sum(axis=0) / i for i in range(1, v + 1)]
    return np.minimum(1.0, tail + 2 * m * delta * np.max(windows, axis=0))


@pytest.mark.parametrize("m, r, v, delta", [(100, 100, 90, 1e-4), (50, 20, 19, 0.0), (1000, 200, 170, 1e-5)])
def test_lower_bound_is_the_largest_epsilon_whose_p_value_is_within_beta(m: int, r: int, v: int, delta: float) -> None:
    bound = epsilon_lower_bound(m, r, v, delta, 0.05)
    grid = np.arange(0.0, 12.0, 0.001)
    brute = grid[brute_p_values(m, r, v, grid, delta) <= 0.05].max()

    assert bound > 0
    assert p_value(m, r, v, bound, delta) <= 0.05  # the ε returned is one at which f ≤ β was checked
    assert bound == pytest.approx(brute, abs=2e-3)


def test_pure_bound_is_the_binomial_tail() -> None:
    """δ = 0: all r guesses right rejects ε exactly where p^r = β, p = e^ε / (1 + e^ε)."""
    p = 0.05 ** (1 / 50)
    assert epsilon_lower_bound(50, 50, 50, 0.0, 0.05) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


def test_more_correct_guesses_give_a_larger_bound_and_a_coin_flip_gives_none() -> None:
    bounds = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in range(100, 201, 10)]

    assert bounds[0] == 0.0  # v = r/2: what ε = 0 gives anyway
    assert all(b1 < b2 for b1, b2 in itertools.pairwise(bounds[2:]))
    assert all(b1 <= b2 for b1, b2 in itertools.pairwise(bounds))
    assert epsilon_lower_bound(1000, 200, 200, 1e-5) > epsilon_lower_bound(1000, 200, 200, 1e-3)  # δ costs
    assert epsilon_lower_bound(100, 100, 50, 0.0) == 0.0
    assert epsilon_lower_bound(100, 100, 0, 0.0) == 0.0


@pytest.mark.parametrize("eps, delta", [(0.5, 0.0), (1.0, 0.02), (2.0, 0.05)])
def test_bound_holds_for_every_outcome_of_a_brute_forced_mechanism(eps: float, delta: float) -> None:
    """m = 6 canaries, every inclusion vector S and every output enumerated: the mechanism reveals all of S with
    probability δ, else each bit through ε-randomized response ((ε, δ)-DP in each bit); the auditor guesses
    "in" for the 2 highest and "out" for the 2 lowest scores (output bit, ties by position). The exact
    P[W ≥ v] never exceeds f_ε(v)."""
    m, p = 6, math.exp(eps) / (1 + math.exp(eps))
    correct = np.zeros(5)  # P[W = w], w = 0..4
    for bits in itertools.product([0, 1], repeat=m):
        truth = np.array(bits, dtype=bool)
        revealed = count_correct(guess(truth + np.arange(m) * 1e-3, 2, 2), truth)[1]
        correct[revealed] += delta / 2**m
        for output in itertools.product([0, 1], repeat=m):
            flips = sum(o != b for o, b in zip(output, bits, strict=True))
            chance = (1 - delta) / 2**m * (1 - p) ** flips * p ** (m - flips)
            right = count_correct(guess(np.array(output) + np.arange(m) * 1e-3, 2, 2), truth)[1]
            correct[right] += chance
    assert correct.sum() == pytest.approx(1.0)
    for v in range(5):
        assert correct[v:].sum() <= p_value(m, 4, v, eps, delta) + 1e-12


def test_guesses_take_the_extremes_and_count_the_right_ones() -> None:
    scores = np.array([0.3, 2.0, -1.0, 0.1, 5.0, -3.0])
    guesses = guess(scores, 2, 1)

    assert guesses.tolist() == [0, 1, 0, 0, 1, -1]
    assert count_correct(guesses, np.array([1, 1, 0, 0, 0, 1], dtype=bool)) == (3, 1)
    assert fixed_guesses(10_000) == [(250, 250)]
    assert fixed_guesses(4) == [(2, 2)]
    with pytest.raises(ConfigError, match="add up to at most"):
        guess(scores, 4, 3)


def test_a_grid_of_guesses_pays_for_its_size() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(4000) < 0.5
    scores = included * 1.0 + rng.normal(size=4000)
    one = audit_scores(scores, included, 1e-5, pairs=[(150, 150)])
    grid = audit_scores(scores, included, 1e-5, pairs=[(150, 150), (50, 50), (400, 400)])

    assert (one.tests, grid.tests) == (1, 3)
    same = audit_scores(scores, included, 1e-5, beta=0.05 / 3, pairs=[(150, 150)])
    assert grid.epsilon >= same.epsilon  # the grid's best, each pair at β / 3
    assert grid.epsilon == max(
        audit_scores(scores, included, 1e-5, beta=0.05 / 3, pairs=[pair]).epsilon
        for pair in [(150, 150), (50, 50), (400, 400)]
    )


# ------------------------------------------------------------------------------------- the releases


STATISTICS_CANARIES = 10_000  # enough for every broken variant of the statistics release to show at ε = 8


@pytest.fixture(scope="session")  # session: once per xdist worker
def statistics_at_8() -> dict[str, ReleaseAudit]:
    """The statistics release at target ε = 8, correct and every broken variant, on one silo (one plan)."""
    return {broken: audit_release("statistics", 8.0, STATISTICS_CANARIES, broken, seed=0) for broken in BROKEN}


def test_statistics_release_stays_below_its_accounted_epsilon_and_the_audit_is_tight(
    statistics_at_8: dict[str, ReleaseAudit],
) -> None:
    correct = statistics_at_8["none"]

    assert 0 < correct.empirical < correct.accounted
    assert correct.tightness >= 0.3  # the goal at ε = 8
    assert correct.audit.canaries == STATISTICS_CANARIES and correct.audit.guesses == 500


@pytest.mark.parametrize("broken", ["shared-noise", "half-noise", "uncharged"])
def test_each_broken_statistics_variant_goes_above_its_accounted_epsilon(
    statistics_at_8: dict[str, ReleaseAudit], broken: str
) -> None:
    audit = statistics_at_8[broken]

    assert audit.empirical > audit.accounted, audit.to_dict()
    if broken == "shared-noise":  # the noise cancels: every guess is right, and both releases were charged
        assert audit.audit.correct == audit.audit.guesses
        assert audit.accounted > statistics_at_8["none"].accounted
    else:
        assert audit.accounted == statistics_at_8["none"].accounted


@pytest.mark.slow
@pytest.mark.parametrize("release, canaries", [("statistics", 10_000), ("cooccurrence", 2_000), ("vae-round", 400)])
def test_every_release_stays_below_its_accounted_epsilon_at_1_4_8(release: str, canaries: int) -> None:
    for target in (1.0, 4.0, 8.0):
        audit = audit_release(release, target, canaries, seed=0)
        assert audit.accounted > 0
        assert audit.empirical < audit.accounted, audit.to_dict()


@pytest.mark.slow
def test_shared_noise_shows_on_the_cooccurrence_release() -> None:
    audit = audit_release("cooccurrence", 1.0, 1_000, "shared-noise", seed=0)

    assert audit.audit.correct == audit.audit.guesses
    assert audit.empirical > audit.accounted


@pytest.mark.slow
def test_vae_round_scores_see_the_canaries_when_the_noise_is_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VAE audit's power: at σ = 0.001 the returned model tells the canaries apart (its ε̂ then says so)."""
    import dataclasses

    from fedsynth.simulations.experiments import mechanism_audit

    plan_of = mechanism_audit.silo_plan
    monkeypatch.setattr(
        mechanism_audit, "silo_plan", lambda config, n: dataclasses.replace(plan_of(config, n), vae_noise=1e-3)
    )
    audit = audit_release("vae-round", 8.0, 400, seed=0)

    assert audit.empirical > 1.0


def test_bad_audit_settings_name_the_option() -> None:
    with pytest.raises(ConfigError, match="--release"):
        audit_release("gan", 8.0, 100)
    with pytest.raises(ConfigError, match="--canaries"):
        audit_release("cooccurrence", 8.0, 5_000)
    with pytest.raises(ConfigError, match="--broken shared-noise"):
        audit_release("vae-round", 8.0, 100, "shared-noise")
    assert set(RELEASES) == {"statistics", "cooccurrence", "vae-round"}


# ------------------------------------------------------------------------------------------ the command


def test_audit_command_with_canaries_writes_the_table_and_json(
    tmp_path: Path, statistics_at_8: dict[str, ReleaseAudit]
) -> None:
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        cli,
        ["audit", "--canaries", str(STATISTICS_CANARIES), "--epsilon", "8", "--release", "statistics",
         "--out", str(out)],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    payload = json.loads((out / "audit.json").read_text())
    (row,) = payload["results"]
    assert row["release"] == "statistics" and row["broken"] == "none" and row["target_epsilon"] == 8.0
    assert row["empirical_epsilon"] == pytest.approx(statistics_at_8["none"].empirical)  # same seed, same run
    assert row["empirical_epsilon"] < row["accounted_epsilon"] and payload["above_accounted"] == []
    assert "ε accounted" in result.output and "statistics" in result.output and "audit.json" in result.output


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["audit"], "--canaries M"),
        (["audit", "--epsilon", "1"], "--epsilon: only for the one-run audit"),
        (["audit", "--canaries", "100", "--epsilon", "x"], "--epsilon"),
        (["audit", "--canaries", "1"], "--canaries"),
        (["audit", "--canaries", "100", "--run", "somewhere"], "drop the run directory"),
        (["audit", "--canaries", "100", "--release", "gan"], "--release"),
    ],
)
def test_audit_command_errors_name_the_option(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, arguments)

    assert result.exit_code == 2
    assert message in result.output
