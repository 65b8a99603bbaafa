"""Membership-inference audit: attack scores, ROC summaries with bootstrap intervals, and the DP bound.

Members are the clients' training users; non-members are real users reserved in the split and
never trained on (``audit-fraction``). Every attack gives each target a score, higher meaning
"more likely a member"; the summary is the attack's AUC and TPR at 1% and 10% FPR, each with a
stratified bootstrap 95% interval.

The bound: if every released output is (ε, δ)-DP with respect to one user's record, any
membership test satisfies TPR ≤ e^ε·FPR + δ and 1 − FPR ≤ e^ε·(1 − TPR) + δ (Kairouz et al.
2015), so its ROC curve lies under :func:`max_tpr` and its AUC under :func:`max_auc`
(= e^ε / (1 + e^ε) when δ = 0). An audit whose interval lies wholly above the bound means the
accounting or the code is wrong: :func:`bound_violations` names such attacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds
from scipy.stats import gaussian_kde, rankdata

from fedsynth.common.evaluation.fidelity import closest_record_distance
from fedsynth.common.models.gan import Discriminator, as_distribution
from fedsynth.common.models.vae import MultVAE, vae_loss
from fedsynth.common.runtime.seeding import rng_for

FPR_LEVELS = (0.01, 0.1)


@dataclass(frozen=True)
class AuditConfig:
    """How the audit is run and summarised."""

    bootstrap: int = 200  # stratified bootstrap resamples for the 95% intervals
    density_dims: int = 5  # SVD dimensions of the density-ratio attack's embedding
    vae_beta: float = 0.2  # KL weight of the ELBO the VAE attack scores targets with
    seed: int = 0


def auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """P(member score > non-member score) + ½·P(tie): the Mann-Whitney AUC. Shapes (m,), (n,)."""
    ranks = rankdata(np.concatenate([member_scores, non_member_scores]))
    m, n = len(member_scores), len(non_member_scores)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, level: float) -> float:
    """The highest TPR of any threshold whose FPR is at most ``level``."""
    true_positives, _ = _counts_at(member_scores, non_member_scores, level)
    return true_positives / len(member_scores)


def _statistics(member_scores: np.ndarray, non_member_scores: np.ndarray) -> dict[str, float]:
    out = {"auc": auc(member_scores, non_member_scores)}
    for level in FPR_LEVELS:
        out[f"tpr@{level:g}fpr"] = tpr_at_fpr(member_scores, non_member_scores, level)
    return out


def summarise(
    member_scores: np.ndarray, non_member_scores: np.ndarray, config: AuditConfig, name: str
) -> dict[str, Any]:
    """AUC and TPR@FPR with stratified bootstrap 95% intervals (``<metric>_low`` / ``<metric>_high``)."""
    member_scores = np.asarray(member_scores, dtype=np.float64)
    non_member_scores = np.asarray(non_member_scores, dtype=np.float64)
    point = _statistics(member_scores, non_member_scores)
    rng = rng_for(config.seed, f"audit-bootstrap-{name}")
    draws: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(config.bootstrap):
        members = member_scores[rng.integers(0, len(member_scores), len(member_scores))]
        non_members = non_member_scores[rng.integers(0, len(non_member_scores), len(non_member_scores))]
        for key, value in _statistics(members, non_members).items():
            draws[key].append(value)
    out: dict[str, Any] = {"members": len(member_scores), "non_members": len(non_member_scores)}
    for key, value in point.items():
        out[key] = value
        out[f"{key}_low"], out[f"{key}_high"] = (float(q) for q in np.quantile(draws[key], [0.025, 0.975]))
    return out


def max_tpr(fpr: np.ndarray | float, epsilon: float, delta: float) -> np.ndarray:
    """The largest TPR any membership test can reach at ``fpr`` against an (ε, δ)-DP release."""
    fpr = np.asarray(fpr, dtype=np.float64)
    if math.isinf(epsilon):
        return np.ones_like(fpr)
    upper = np.minimum(np.exp(epsilon) * fpr + delta, 1 - np.exp(-epsilon) * (1 - delta - fpr))
    return np.clip(upper, 0.0, 1.0)


def max_auc(epsilon: float, delta: float, points: int = 200_001) -> float:
    """The area under :func:`max_tpr`: the highest AUC (ε, δ)-DP allows (e^ε / (1 + e^ε) for δ = 0)."""
    if math.isinf(epsilon):
        return 1.0
    fpr = np.linspace(0.0, 1.0, points)
    return float(np.trapezoid(max_tpr(fpr, epsilon, delta), fpr))


def dcr_scores(targets: sp.csr_matrix, synthetic: sp.csr_matrix) -> np.ndarray:
    """Distance to closest synthetic record: −(Jaccard distance to the nearest synthetic user). (n_targets,)."""
    return -closest_record_distance(targets, synthetic)


def _unit_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    binary = (matrix > 0).astype(np.float64).tocsr()
    norms = np.sqrt(np.asarray(binary.sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1.0)) @ binary)


def density_ratio_scores(
    targets: sp.csr_matrix, synthetic: sp.csr_matrix, reference: sp.csr_matrix, config: AuditConfig
) -> np.ndarray:
    """DOMIAS-style (van Breugel et al. 2023): log p_synthetic(x) − log p_reference(x). (n_targets,).

    Users are embedded by a truncated SVD of the (L2-normalised) synthetic data, so no
    member is used to build the embedding; both densities are Gaussian KDEs in that space.
    ``reference`` must be real non-members disjoint from the audit's targets.
    """
    dims = max(1, min(config.density_dims, min(synthetic.shape) - 1))
    synthetic_rows = _unit_rows(synthetic)
    _, _, basis = svds(synthetic_rows, k=dims, random_state=config.seed)

    def embed(matrix: sp.csr_matrix) -> np.ndarray:
        return np.asarray(_unit_rows(matrix) @ basis.T).T  # (dims, n)

    points = embed(targets)
    rng = rng_for(config.seed, "audit-density")

    def density(matrix: sp.csr_matrix) -> gaussian_kde:  # tiny jitter: duplicate users make the KDE singular
        embedded = embed(matrix)
        return gaussian_kde(embedded + rng.normal(0.0, 1e-6, size=embedded.shape))

    synthetic_density, reference_density = density(synthetic), density(reference)
    return np.asarray(synthetic_density.logpdf(points) - reference_density.logpdf(points))


def _batches(targets: sp.csr_matrix, size: int = 512) -> list[torch.Tensor]:
    dense = (targets > 0).astype(np.float32)
    return [torch.from_numpy(dense[i : i + size].toarray()) for i in range(0, dense.shape[0], size)]


@torch.no_grad()
def discriminator_scores(discriminator: Discriminator, targets: sp.csr_matrix) -> np.ndarray:
    """LOGAN white-box (Hayes et al. 2019): the released discriminator's "real" logit on each target."""
    discriminator.eval()
    return np.concatenate([discriminator(as_distribution(x)).reshape(-1).numpy() for x in _batches(targets)])


@torch.no_grad()
def vae_scores(vae: MultVAE, targets: sp.csr_matrix, beta: float) -> np.ndarray:
    """Negative ELBO loss per interaction of the released Mult-VAE on each target (z = μ).

    A low loss suggests a member; dividing by the history length removes the loss's growth
    with length, which would otherwise swamp the membership signal.
    """
    vae.eval()
    losses = []
    for x in _batches(targets):
        logits, mu, logvar = vae(x)
        per_user = vae_loss(logits, x, mu, logvar, beta, reduction="none")
        losses.append((per_user / x.sum(dim=1).clamp(min=1.0)).numpy())
    return -np.concatenate(losses)


def _counts_at(positive: np.ndarray, negative: np.ndarray, level: float) -> tuple[int, int]:
    """(true positives, false positives) of the threshold with the highest TPR whose FPR is ≤ ``level``."""
    thresholds = np.concatenate([np.unique(np.concatenate([positive, negative])), [np.inf]])
    false_positives = len(negative) - np.searchsorted(np.sort(negative), thresholds, side="left")
    true_positives = len(positive) - np.searchsorted(np.sort(positive), thresholds, side="left")
    allowed = false_positives <= level * len(negative)
    best = int(np.argmax(np.where(allowed, true_positives, -1)))
    return int(true_positives[best]), int(false_positives[best])


def empirical_epsilon(
    member_scores: np.ndarray, non_member_scores: np.ndarray, delta: float, confidence: float = 0.95
) -> float:
    """A lower bound on the ε of any (ε, δ)-DP release under which this attack's results are possible.

    At the thresholds of 1% and 10% FPR, in both directions (members high; non-members low), with
    Clopper-Pearson bounds on TPR (lower) and FPR (upper), Bonferroni-corrected over the four tests
    so that the whole bound holds with ``confidence`` (as in DP auditing, Jagielski et al. 2020):
    ε ≥ log((TPR_low − δ) / FPR_high). 0 when the data give no evidence of leakage.
    """
    from scipy.stats import beta

    tests = [(member_scores, non_member_scores, level) for level in FPR_LEVELS]
    tests += [(-non_member_scores, -member_scores, level) for level in FPR_LEVELS]
    alpha = (1 - confidence) / len(tests)
    best = 0.0
    for positive, negative, level in tests:
        tp, fp = _counts_at(np.asarray(positive), np.asarray(negative), level)
        m, n = len(positive), len(negative)
        tpr_low = float(beta.ppf(alpha / 2, tp, m - tp + 1)) if tp > 0 else 0.0
        fpr_high = float(beta.ppf(1 - alpha / 2, fp + 1, n - fp)) if fp < n else 1.0
        if tpr_low - delta > 0 and fpr_high > 0:
            best = max(best, math.log((tpr_low - delta) / fpr_high))
    return best


def bound_violations(results: dict[str, dict[str, Any]], epsilon: float, delta: float) -> list[str]:
    """Attacks that prove more leakage than (ε, δ)-DP allows, at 95% confidence.

    Either the AUC's bootstrap interval lies wholly above :func:`max_auc`, or the attack's
    :func:`empirical_epsilon` (Clopper-Pearson, Bonferroni-corrected) exceeds ε. TPR at a fixed
    low FPR is not tested by its bootstrap interval: with few non-members that statistic is an
    extreme order statistic, for which the bootstrap is not valid.
    """
    ceiling = max_auc(epsilon, delta)
    bad = []
    for name, summary in results.items():
        if summary["auc_low"] > ceiling + 1e-9:
            bad.append(f"{name}: AUC {summary['auc']:.3f} (interval from {summary['auc_low']:.3f}) > {ceiling:.3f}")
        if summary.get("epsilon_lower_bound", 0.0) > epsilon + 1e-9:
            bad.append(f"{name}: empirical epsilon lower bound {summary['epsilon_lower_bound']:.3f} > {epsilon:.3f}")
    return bad


@dataclass(frozen=True)
class AuditInputs:
    """What an audit attacks and with whom.

    Attributes:
        members: CSR (m, n_items), the clients' training users.
        non_members: CSR (n, n_items), real users never trained on (same population).
        reference: CSR (r, n_items), other real non-members: the density-ratio attack's reference.
        synthetic: each released synthetic dataset (CSR (s, n_items)) by label.
        vae, discriminator: the released global models (None: not attacked).
    """

    members: sp.csr_matrix
    non_members: sp.csr_matrix
    reference: sp.csr_matrix
    synthetic: dict[str, sp.csr_matrix]
    vae: MultVAE | None = None
    discriminator: Discriminator | None = None


def attack_scores(inputs: AuditInputs, config: AuditConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each attack's (member scores, non-member scores).

    Attacks on each synthetic dataset ``<label>``: ``<label>/dcr`` and ``<label>/density-ratio``;
    on the released models: ``model/vae-elbo`` and ``model/discriminator``.
    """
    members, non_members = inputs.members, inputs.non_members
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    targets = sp.vstack([members, non_members]).tocsr()
    for label, data in inputs.synthetic.items():
        scores[f"{label}/dcr"] = (dcr_scores(members, data), dcr_scores(non_members, data))
        ratio = density_ratio_scores(targets, data, inputs.reference, config)
        scores[f"{label}/density-ratio"] = (ratio[: members.shape[0]], ratio[members.shape[0] :])
    if inputs.vae is not None:
        beta = config.vae_beta
        scores["model/vae-elbo"] = (vae_scores(inputs.vae, members, beta), vae_scores(inputs.vae, non_members, beta))
    if inputs.discriminator is not None:
        scores["model/discriminator"] = (
            discriminator_scores(inputs.discriminator, members),
            discriminator_scores(inputs.discriminator, non_members),
        )
    return scores


def run_audit(inputs: AuditInputs, epsilon: float, delta: float, config: AuditConfig | None = None) -> dict[str, Any]:
    """Every attack's summary, the (ε, δ) bound and any violations of it (a bug if not empty)."""
    config = config or AuditConfig()
    members, non_members = inputs.members, inputs.non_members
    if members.shape[0] < 2 or non_members.shape[0] < 2:
        raise ValueError(
            f"the audit needs at least 2 members and 2 non-members, got {members.shape[0]} and {non_members.shape[0]}; "
            "raise audit-fraction."
        )
    scores = attack_scores(inputs, config)
    attacks = {
        name: {**summarise(m, n, config, name), "epsilon_lower_bound": empirical_epsilon(m, n, delta)}
        for name, (m, n) in scores.items()
    }
    return {
        "attacks": attacks,
        "bound": {
            "epsilon": epsilon,
            "delta": delta,
            "max_auc": max_auc(epsilon, delta),
            **{f"max_tpr@{level:g}fpr": float(max_tpr(level, epsilon, delta)) for level in FPR_LEVELS},
        },
        "violations": bound_violations(attacks, epsilon, delta),
        "members": members.shape[0],
        "non_members": non_members.shape[0],
        "reference": inputs.reference.shape[0],
        "bootstrap": config.bootstrap,
    }
