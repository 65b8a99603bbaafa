"""Fit the generator and the Mult-VAE decoder to the DP marginals on the server (post-processing, no ε).

The GEM recipe (Liu, Vietri, Wu, NeurIPS 2021) for implicit-feedback users. A model maps
z ~ N(0, I) to item logits; synthesis (:mod:`fedsynth.common.synthesis.sampling`) draws a user's ℓ items without
replacement from π = softmax(logits / T). Relaxed, that user holds item i with probability

    p_i = 1 − exp(−λ π_i),   λ > 0 such that Σ_i p_i = ℓ           (conditional-Poisson inclusion)

(λ found per user by Newton's method, monotone from λ = ℓ because the sum is concave in λ;
λ is held fixed in the gradient). Treating items as independent given p, the expected
contributions of a batch of B generated users with lengths ℓ_b (drawn from the DP length
histogram) to the two releases are, scaled to the N̂ users the noisy histogram counts,

    ĉ = N̂/B · Σ_b p_b · min(1, C/√ℓ_b)                               (n_items,)  first order
    Ŝ = N̂/B · Σ_b (p_b,M p_b,Mᵀ + diag(p_b,M − p_b,M²)) / ℓ_b          (M, M)      co-occurrence

and the loss is the Gaussian log-likelihood of the measurements, each weighted by its noise:

    L = ‖ĉ − c̃‖² / σ_c² + ‖triu(Vᵀ (Ŝ − S̃) V)‖² / σ_S²

with c̃ the summed noisy counts, S̃ the summed noisy co-occurrence and V (M, r) its eigen-
directions above the noise's spectral edge 2σ_S√M (:meth:`NoisyCooccurrence.signal_subspace`).
``loss = "relative"`` (``marginal-fit-loss``) weights the pair (k, l) of the second term by
median(ℓ) / √(ℓ_k ℓ_l), ℓ = diag(Vᵀ S̃ V) the released eigenvalues: the errors relative to the
directions' sizes, so the weak taste directions, which EASE's inverse Gram leans on, count as much
as the strong popularity one. It is not the likelihood any more; where the model cannot match
every direction (it cannot: at 10⁴ users per silo, ε = 8, the fit's χ² is ~10× the measurements'
count) it chooses which errors to leave (measured: docs/results.md, "Which loss").
Vᵀ N V of a symmetric Gaussian noise matrix N with i.i.d. N(0, σ²) entries has i.i.d. N(0, σ²)
upper entries again (V orthonormal), so the weighting stays the likelihood's. Which directions V
holds is ``directions`` (``marginal-fit-directions``): "all" (the default), the whole eigenbasis
(M, M) of S̃, so the loss is the likelihood of every measured pair; "signal", only the r directions
above the noise edge, the ones below left free. Fitting all of them lets the smooth generator
average the weak directions' signal out of their noise rather than ignore it (measured on
validation users, EASE on the fitted synthesis, all vs signal: 10³ users per silo 0.241 vs 0.200
at ε = 2 and 0.330 vs 0.322 at ε = 8; 10⁴ users per silo 0.352 vs 0.342 at ε = 2 and 0.358 vs
0.354 at ε = 8; docs/results.md). Forcing them to 0 instead (fitting the eigenvalue-thresholded
matrix) was worse than either (1,000 users per silo, ε = 8: 0.236 vs 0.279). Under the relative
loss a direction's size is its eigenvalue floored at the noise edge, so the directions of
noise size weigh as under the likelihood. Only the model's parameters move (the log-popularity
prior stays fixed); Adam, a fresh batch of z and lengths each step. Everything here reads
released statistics only, so it costs no ε.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.releases.cooccurrence import NoisyCooccurrence, noise_edge
from fedsynth.common.privacy.releases.statistics import LengthSource, NoisyStatistics

if TYPE_CHECKING:
    from fedsynth.common.models.bundle import ModelBundle

Logits = Callable[[torch.Tensor], torch.Tensor]  # z (B, latent) → item logits (B, n_items)
FIT_LOSSES = ("likelihood", "relative")
FIT_DIRECTIONS = ("all", "signal")


@dataclass(frozen=True)
class MarginalTargets:
    """The released statistics a model is fitted to (sums over clients, noise std per entry of the sum)."""

    item_counts: np.ndarray  # (n_items,) Σ x · min(1, C/√ℓ) + noise
    counts_std: float
    clip: float  # C, the first-order release's per-user L2 bound
    num_users: float  # N̂: the noisy length histogram's total
    cooccurrence: np.ndarray | None = None  # (M, M) noisy Σ x_M x_Mᵀ / ℓ, or None (first order only)
    cooccurrence_std: float = 0.0
    items: np.ndarray | None = None  # (M,) catalogue indices of ``cooccurrence``
    basis: np.ndarray | None = None  # (M, r) the fitted directions V: only Vᵀ S V is fitted (r = 0: nothing)

    @classmethod
    def from_releases(
        cls, statistics: NoisyStatistics, cooccurrence: NoisyCooccurrence | None, clip: float, directions: str
    ) -> MarginalTargets:
        """The targets of the summed releases (None: first order only); the co-occurrence on ``directions``
        of :data:`FIT_DIRECTIONS`: its whole eigenbasis, or its signal subspace (module docstring)."""
        users = float(max(statistics.length_histogram.sum(), 1.0))
        if cooccurrence is None:
            return cls(statistics.item_counts, statistics.noise_std, clip, users)
        basis = cooccurrence.spectrum[1] if directions == "all" else cooccurrence.signal_subspace()[0]
        return cls(
            statistics.item_counts,
            statistics.noise_std,
            clip,
            users,
            cooccurrence.matrix,
            cooccurrence.noise_std,
            cooccurrence.items,
            basis,
        )


AUTO_FIT_STEPS = (300, 1000)  # marginal-fit-steps 0: below / from AUTO_FIT_STRONG_SIGNAL (docs/results.md)
AUTO_FIT_STRONG_SIGNAL = 4.0  # the co-occurrence's signal ratio from which the longer fit pays


def auto_fit_steps(ratio: float) -> int:
    """Adam steps for a co-occurrence whose :func:`~fedsynth.common.privacy.releases.cooccurrence.signal_ratio`
    (predicted popularity eigenvalue ÷ noise edge, post-processing) is ``ratio``: the longer fit where the release
    stands well above its noise, the shorter one where a long fit would chase the noise.

    Chosen on validation users (EASE on the fitted synthesis, docs/results.md "How long the fit runs"): at a
    ratio of 13 and 44 (10⁴ users per silo, ε = 2 and 8) 1,000 steps beat 100 by 0.05–0.06 and beat DP-EASE
    at ε = 2; at 4.7 (10³, ε = 8) 300 and 1,000 steps were level, 0.03 above 100; at 0.8–1.5 (10³ at ε ≤ 2,
    the built-in data at ε = 8) 300 steps were level with or better than 100 and 1,000.
    """
    short, long = AUTO_FIT_STEPS
    return long if ratio >= AUTO_FIT_STRONG_SIGNAL else short


@dataclass(frozen=True)
class MarginalFitConfig:
    """Adam on the model's parameters: steps, generated users per step, learning rate; T of the synthesis."""

    steps: int = 100
    batch_size: int = 256  # generated users per step (512: 3× the time per step on 6,298 items, the λ solve)
    learning_rate: float = 3e-3
    temperature: float = 0.5
    loss: str = "likelihood"  # or "relative": the pair errors relative to the directions' sizes (module docstring)
    directions: str = "all"  # or "signal": which directions of the co-occurrence are fitted (module docstring)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"marginal-fit-steps must be at least 1, got {self.steps}.")
        if self.loss not in FIT_LOSSES:
            raise ConfigError(f"marginal-fit-loss must be one of {', '.join(FIT_LOSSES)}, got {self.loss!r}.")
        if self.directions not in FIT_DIRECTIONS:
            raise ConfigError(
                f"marginal-fit-directions must be one of {', '.join(FIT_DIRECTIONS)}, got {self.directions!r}."
            )
        if not self.learning_rate > 0 or not self.temperature > 0:
            raise ConfigError("the marginal fit's learning rate and temperature must be positive.")


def inclusion_probabilities(logits: torch.Tensor, lengths: torch.Tensor, temperature: float) -> torch.Tensor:
    """p (B, n) = 1 − exp(−λ_b π_b) with Σ_i p_bi = ℓ_b, π = softmax(logits / T); ``lengths`` (B,) < n."""
    pi = F.softmax(logits / temperature, dim=1)
    with torch.no_grad():
        scale = lengths.clone().to(pi.dtype)
        for _ in range(100):
            kept = torch.exp(-scale[:, None] * pi)
            excess = (1.0 - kept).sum(dim=1) - lengths
            slope = (pi * kept).sum(dim=1).clamp(min=1e-30)
            scale = (scale - excess / slope).clamp(max=1e30)
            if bool((excess.abs() <= 0.005 * lengths + 1e-2).all()):  # within 0.5% of each length
                break
    return -torch.expm1(-scale[:, None] * pi)


def expected_counts(p: torch.Tensor, lengths: torch.Tensor, targets: MarginalTargets) -> torch.Tensor:
    """ĉ (n_items,): a batch's expected first-order release scaled to N̂ users (formula above)."""
    scale = targets.num_users / p.shape[0]
    return scale * (p * torch.clamp(targets.clip / lengths.sqrt(), max=1.0)[:, None]).sum(dim=0)


def expected_marginals(
    p: torch.Tensor, lengths: torch.Tensor, targets: MarginalTargets
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ĉ (n_items,), Ŝ (M, M) or None): a batch's expected releases scaled to N̂ users (formulas above)."""
    scale = targets.num_users / p.shape[0]
    counts = expected_counts(p, lengths, targets)
    if targets.items is None:
        return counts, None
    block = p[:, torch.as_tensor(targets.items)]
    weight = (1.0 / lengths)[:, None]
    pairs = block.T @ (weight * block) + torch.diag((weight * (block - block**2)).sum(dim=0))
    return counts, scale * pairs


ORTHONORMAL_TOLERANCE = 1e-4  # max |VᵀV − I| for the whole-basis shortcut of :func:`marginal_loss`


@dataclass(frozen=True)
class SubspaceTarget:
    """The fitted part of the co-occurrence, computed once per fit: V (M, r), Vᵀ S̃ V (r, r), the upper
    triangle's (rows, cols) and the weight of each of its entries ((r(r + 1)/2,), 1/σ_S² under the likelihood).

    ``released`` (M, M) is S̃ itself when V is a whole orthonormal basis (r = M), S̃ is symmetric (a release
    always is) and every weight is the same (the likelihood): the loss is then computed without V's M × M
    products (:func:`marginal_loss`); else None.
    """

    basis: torch.Tensor
    measured: torch.Tensor
    upper: tuple[torch.Tensor, torch.Tensor]
    weights: torch.Tensor
    released: torch.Tensor | None = None

    @classmethod
    def of(cls, targets: MarginalTargets, loss: str = "likelihood") -> SubspaceTarget | None:
        """None when nothing second-order is fitted (first order only, or r = 0)."""
        if targets.basis is None or targets.cooccurrence is None or not targets.basis.size:
            return None
        basis = torch.as_tensor(targets.basis, dtype=torch.float32)
        released = torch.as_tensor(targets.cooccurrence, dtype=torch.float32)
        measured = basis.T @ released @ basis
        rows, cols = torch.triu_indices(basis.shape[1], basis.shape[1])
        weights = torch.full((len(rows),), 1.0 / max(targets.cooccurrence_std, 1e-3) ** 2)
        if loss == "relative":  # sizes floored at the noise edge 2σ_S√M (directions of noise size: the likelihood)
            edge = noise_edge(max(targets.cooccurrence_std, 1e-3), len(targets.cooccurrence))
            sizes = torch.clamp(torch.diagonal(measured), min=edge)
            weights = weights * sizes.median() / torch.sqrt(sizes[rows] * sizes[cols])
            return cls(basis, measured, (rows, cols), weights)
        whole = basis.shape[0] == basis.shape[1] and is_orthonormal(basis) and torch.equal(released, released.T)
        return cls(basis, measured, (rows, cols), weights, released if whole else None)


def is_orthonormal(basis: torch.Tensor) -> bool:
    """Whether the columns of ``basis`` (M, r) are orthonormal to :data:`ORTHONORMAL_TOLERANCE`."""
    gram = basis.T.double() @ basis.double()
    return bool((gram - torch.eye(basis.shape[1], dtype=torch.float64)).abs().max() <= ORTHONORMAL_TOLERANCE)


def marginal_loss(
    p: torch.Tensor, lengths: torch.Tensor, targets: MarginalTargets, subspace: SubspaceTarget | None
) -> torch.Tensor:
    """L = ‖ĉ − c̃‖²/σ_c² + Σ w · triu(Vᵀ(Ŝ − S̃)V)² (noise stds floored at 1e-3 for exact, non-private targets);
    ``subspace`` (:meth:`SubspaceTarget.of` of ``targets``) None: first order only.

    The second term from the batch's M columns P_M (B, M) and the weights ω_b = 1/ℓ_b, with
    Ŝ = s·(P_Mᵀ Ω P_M + diag(d)), d = Σ_b ω_b (p_b,M − p_b,M²), s = N̂/B (:func:`expected_marginals`):

    * in general Vᵀ Ŝ V = s·((P_M V)ᵀ Ω (P_M V) + (V ∘ d)ᵀ V), without forming Ŝ (B·M·r + B·r² + M·r²
      multiply-adds instead of B·M² + M²·r + M·r²);
    * for a whole orthonormal basis and equal weights w (``subspace.released`` set), A = Vᵀ(Ŝ − S̃)V is
      symmetric with ‖A‖_F = ‖Ŝ − S̃‖_F, so Σ_{k≤l} A_kl² = (‖Ŝ − S̃‖_F² + Σ_k A_kk²)/2, and
      A_kk = s·(Σ_b ω_b (P_M V)_bk² + Σ_i d_i V_ik²) − (Vᵀ S̃ V)_kk: no M × M product with V at all.
    """
    counts = expected_counts(p, lengths, targets)
    observed = torch.as_tensor(targets.item_counts, dtype=p.dtype)
    loss = ((counts - observed) ** 2).sum() / max(targets.counts_std, 1e-3) ** 2
    if targets.items is None or subspace is None:
        return loss
    scale = targets.num_users / p.shape[0]
    block = p[:, torch.as_tensor(targets.items)]  # P_M (B, M)
    weight = (1.0 / lengths)[:, None]  # ω (B, 1)
    weighted = weight * block
    spread = (weighted - weighted * block).sum(dim=0)  # d (M,)
    projected = block @ subspace.basis  # P_M V (B, r)
    if subspace.released is not None:
        pairs = scale * (block.T @ weighted + torch.diag(spread))  # Ŝ (M, M)
        diagonal = scale * ((weight * projected**2).sum(dim=0) + spread @ subspace.basis**2)  # diag(Vᵀ Ŝ V) (r,)
        squares = ((pairs - subspace.released) ** 2).sum() + ((diagonal - subspace.measured.diagonal()) ** 2).sum()
        return loss + subspace.weights[0] * squares / 2
    fitted = scale * (projected.T @ (weight * projected) + (subspace.basis * spread[:, None]).T @ subspace.basis)
    difference = (fitted - subspace.measured)[subspace.upper]
    return loss + (subspace.weights * difference**2).sum()


def fit_model(
    logits_of: Logits,
    parameters: Iterable[torch.nn.Parameter],
    latent_dim: int,
    targets: MarginalTargets,
    subspace: SubspaceTarget | None,
    lengths: LengthSource,
    config: MarginalFitConfig,
    seed: int,
) -> tuple[float, float]:
    """Adam on ``parameters`` to minimise :func:`marginal_loss` (``subspace``: :meth:`SubspaceTarget.of`
    ``targets``); (first step's loss, last step's loss)."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(list(parameters), lr=config.learning_rate)
    num_items = len(targets.item_counts)
    first = last = float("nan")
    for step in range(config.steps):
        z = torch.randn(config.batch_size, latent_dim, generator=generator)
        drawn = np.clip(lengths.sample(config.batch_size, rng), 1, max(1, num_items - 1))
        ell = torch.as_tensor(drawn, dtype=torch.float32)
        p = inclusion_probabilities(logits_of(z), ell, config.temperature)
        loss = marginal_loss(p, ell, targets, subspace)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = float(loss.detach())
        first = last if step == 0 else first
    return first, last


def fit_bundle(
    bundle: ModelBundle, targets: MarginalTargets, lengths: LengthSource, config: MarginalFitConfig, seed: int
) -> dict[str, tuple[float, float]]:
    """Fit the GAN generator and the Mult-VAE decoder in place; (first, last) loss per model."""
    generator, vae = bundle.generator, bundle.vae
    generator.train()
    vae.train()
    subspace = SubspaceTarget.of(targets, config.loss)  # O(M³) at M × M: once for both models
    return {
        "gan": fit_model(
            generator, generator.net.parameters(), generator.noise_dim, targets, subspace, lengths, config, seed
        ),
        "vae": fit_model(
            vae.decode, vae.decoder.parameters(), vae.latent_dim, targets, subspace, lengths, config, seed + 1
        ),
    }
