"""Membership-inference audit: the attack code detects a leaky synthesizer, not independent data; the DP bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedsynth.common.config.sections import SplitConfig
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.split import split_users
from fedsynth.common.evaluation.membership_audit import (
    AuditConfig,
    AuditInputs,
    auc,
    bound_violations,
    density_ratio_scores,
    empirical_epsilon,
    max_auc,
    max_tpr,
    run_audit,
    summarise,
    tpr_at_fpr,
    vae_scores,
)
from fedsynth.common.models.vae import MultVAE, vae_loss

CONFIG = AuditConfig(bootstrap=50, seed=0)


@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 0.0), (1.0, 1e-5), (2.0, 0.01), (8.0, 1e-3)])
def test_bound_curve_matches_the_formula(epsilon: float, delta: float) -> None:
    fpr = np.linspace(0, 1, 101)
    expected = np.clip(np.minimum(math.exp(epsilon) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr)), 0, 1)

    np.testing.assert_allclose(max_tpr(fpr, epsilon, delta), expected)
    assert max_tpr(0.0, epsilon, 0.0) == 0.0 and max_tpr(1.0, epsilon, delta) == 1.0


def test_max_auc_is_the_logistic_of_epsilon_without_delta_and_grows_with_delta() -> None:
    for epsilon in (0.01, 0.5, 1.0, 3.0, 8.0):
        assert max_auc(epsilon, 0.0) == pytest.approx(math.exp(epsilon) / (1 + math.exp(epsilon)), abs=1e-6)
    assert max_auc(1.0, 0.05) > max_auc(1.0, 0.0)
    assert max_auc(math.inf, 0.0) == 1.0


def test_auc_and_tpr_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    members, non_members = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 60).round(1)  # rounded: ties
    pairs = (members[:, None] > non_members[None, :]).mean() + 0.5 * (members[:, None] == non_members[None, :]).mean()

    assert auc(members, non_members) == pytest.approx(pairs)
    for level in (0.01, 0.1, 0.5):
        best = max(
            (members >= t).mean()
            for t in np.concatenate([members, non_members, [np.inf]])
            if (non_members >= t).mean() <= level
        )
        assert tpr_at_fpr(members, non_members, level) == pytest.approx(best)


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    summary = summarise(rng.normal(0.3, 1, 200), rng.normal(0, 1, 200), CONFIG, "x")

    assert summary["auc_low"] <= summary["auc"] <= summary["auc_high"]
    assert 0.55 < summary["auc"] < 0.7 and summary["members"] == 200


def test_a_perfect_attack_at_small_epsilon_is_reported_as_a_violation() -> None:
    members, non_members = np.arange(100) + 100.0, np.arange(100.0)
    summary = summarise(members, non_members, CONFIG, "perfect")
    summary["epsilon_lower_bound"] = empirical_epsilon(members, non_members, 1e-5)

    assert summary["epsilon_lower_bound"] > 2.0
    assert bound_violations({"perfect": summary}, epsilon=0.5, delta=1e-5)
    assert bound_violations({"perfect": summary}, epsilon=math.inf, delta=0.0) == []


@pytest.mark.parametrize("seed", range(5))
def test_a_null_attack_with_few_non_members_is_not_a_violation(seed: int) -> None:
    """The sweep's shape (660 members, 94 non-members): chance alone puts members above every
    non-member, which a bootstrap interval of TPR@1%FPR mistook for a violation at ε = 0.5."""
    rng = np.random.default_rng(seed)
    members, non_members = rng.normal(size=660), rng.normal(size=94)
    summary = {**summarise(members, non_members, CONFIG, "null"), "epsilon_lower_bound": 0.0}
    summary["epsilon_lower_bound"] = empirical_epsilon(members, non_members, 8e-4)

    assert summary["epsilon_lower_bound"] < 0.5
    assert bound_violations({"null": summary}, epsilon=0.5, delta=8e-4) == []


def test_empirical_epsilon_matches_a_hand_computation() -> None:
    # 50 of 100 members above a threshold that no non-member (of 100) reaches.
    members, non_members = np.concatenate([np.full(50, 10.0), np.zeros(50)]), np.zeros(100)
    from scipy.stats import beta

    alpha = 0.05 / 4
    expected = math.log(beta.ppf(alpha / 2, 50, 51) / beta.ppf(1 - alpha / 2, 1, 100))

    assert empirical_epsilon(members, non_members, 0.0) == pytest.approx(expected)


@pytest.fixture(scope="module")
def members_and_non_members(small_interactions: Interactions) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    split = split_users(small_interactions, SplitConfig(audit_fraction=0.3, seed=2))
    assert split.audit is not None
    reference = small_interactions.matrix[np.concatenate([split.validation.users, split.test.users])]
    return split.train, split.audit, reference


def test_audit_on_a_synthesizer_that_copies_training_users_gives_auc_near_one(
    members_and_non_members: tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix],
) -> None:
    members, non_members, reference = members_and_non_members
    leaky = {"synthetic": members.copy()}

    result = run_audit(AuditInputs(members, non_members, reference, leaky), 1.0, 1e-5, CONFIG)

    attacks = result["attacks"]
    assert attacks["synthetic/dcr"]["auc"] > 0.99
    assert attacks["synthetic/dcr"]["tpr@0.01fpr"] > 0.9
    assert attacks["synthetic/density-ratio"]["auc"] > 0.6
    assert result["violations"], "a copying 'synthesizer' must break the ε = 1 bound"


def test_audit_on_independent_data_gives_auc_near_one_half(
    members_and_non_members: tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix],
) -> None:
    members, non_members, reference = members_and_non_members
    # Synthetic users drawn independently of any record: each row resamples items by the
    # real popularity (computed from the reference population, never from members).
    rng = np.random.default_rng(3)
    popularity = np.asarray(reference.sum(axis=0)).ravel() + 0.1
    lengths = rng.choice(np.diff(reference.indptr), size=400)
    rows = [rng.choice(reference.shape[1], size=n, replace=False, p=popularity / popularity.sum()) for n in lengths]
    independent = sp.csr_matrix(
        (np.ones(sum(lengths)), (np.repeat(np.arange(len(rows)), lengths), np.concatenate(rows))),
        shape=(len(rows), reference.shape[1]),
    )

    result = run_audit(AuditInputs(members, non_members, reference, {"synthetic": independent}), 1.0, 1e-5, CONFIG)

    for name in ("synthetic/dcr", "synthetic/density-ratio"):
        summary = result["attacks"][name]
        assert 0.35 < summary["auc"] < 0.65, (name, summary["auc"])
        assert summary["auc_low"] < 0.5 < summary["auc_high"] or abs(summary["auc"] - 0.5) < 0.1
    assert result["violations"] == []


def test_vae_attack_detects_an_overfitted_model(
    members_and_non_members: tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix],
) -> None:
    members, non_members, _ = members_and_non_members
    torch.manual_seed(0)
    vae = MultVAE(members.shape[1], hidden_dims=(256,), latent_dim=32, dropout=0.0)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    x = torch.from_numpy((members > 0).astype(np.float32).toarray())
    for _ in range(300):  # no DP, many epochs on few users: memorisation
        logits, mu, logvar = vae(x)
        loss = vae_loss(logits, x, mu, logvar, beta=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    member_scores, non_member_scores = vae_scores(vae, members, 0.2), vae_scores(vae, non_members, 0.2)

    assert auc(member_scores, non_member_scores) > 0.8


def test_density_ratio_accepts_a_reference_larger_than_the_synthetic_data(
    members_and_non_members: tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix],
) -> None:
    members, non_members, reference = members_and_non_members
    small_synthetic = members[:20]

    scores = density_ratio_scores(non_members, small_synthetic, sp.vstack([reference, reference]).tocsr(), CONFIG)

    assert scores.shape == (non_members.shape[0],) and np.isfinite(scores).all()
