"""DP-ALS: private alternating least squares (Chien et al., ICML 2021), federated, as a DP baseline row.

Implicit-feedback matrix factorisation (iALS, Hu et al. 2008): user u's observed items Ω_u get
target 1, every (user, item) pair a "gravity" weight w₀ towards 0,

    min_{U,V}  Σ_u Σ_{j∈Ω_u} c_uj (1 − u_u·v_j)²  +  w₀ Σ_{u,j} (u_u·v_j)²  +  λ (‖U‖² + ‖V‖²),

solved by alternating exact least squares. As in Chien et al. (Algorithm 1, the billboard model),
**users' factors are never released**: each silo solves its own users' u_u from the public item
factors V (rank d), and only the item side's sufficient statistics leave it, with Gaussian noise:

* G = Σ_u u_u u_uᵀ (d × d), the gravity Gramian;
* A_j = Σ_{u∋j} c_uj u_u u_uᵀ (d × d per trained item j);
* b_j = Σ_{u∋j} c_uj u_u (d per trained item j).

**Sensitivity.** u_u is clipped to ‖u_u‖ ≤ 1 and each user's weights to Σ_j c_uj² = 1
(c_uj = 1/√|Ω_u|: the "adaptive weights" of Krichene et al. 2023 with exponent 0). One user's
whole history then moves G by ‖u uᵀ‖_F ≤ 1, the stacked (A_j) by √(Σ_j c_uj²)·‖u uᵀ‖_F ≤ 1 and
the stacked (b_j) by ≤ 1 in L2: three Gaussian mechanisms of sensitivity 1 per iteration
(symmetric matrices: the upper triangle is drawn and mirrored, as in DP-EASE). First, a DP count
release (each user's x scaled to L2 norm ≤ ``counts_clip``) at the same σ picks the trained items:
those whose count, in units of the clip, clears ``min_signal`` noise stds of the sum (at most
``items``; none when fewer than ``rank`` do, and then nothing more is released and the row ranks by
the counts, but the whole plan is still charged: whether it stops depends on the data). T iterations
and the counts are 3T + 1 releases at one noise multiplier σ_k, calibrated with the pipeline's
accountant for client k's own δ_k. A user's factor u_u is a
function of that user's rows and the public V only, so each release is a Gaussian mechanism of
sensitivity 1 on the silo's users; all 3T + 1 compose, each charged in full (no sampling
amplification is assumed).

**Federated.** Each silo adds its own noise N(0, σ_k²) to its sums (as the other DP baselines do
without secure aggregation); the server sums, projects G onto the PSD cone (post-processing)
and solves v_j = (A_j + w₀ G + (λ + 2s√d) I)⁻¹ b_j, with s the noise std of the summed A_j and
2s√d the top of a d × d symmetric Gaussian matrix's spectrum (the regularised matrix stays
positive definite, the DP-EASE rule). The initial V is public randomness (a fixed seed).

**Scoring** a held-out user: u = (V_Ωᵀ V_Ω + w₀ VᵀV + λI)⁻¹ V_Ωᵀ 1 from their fold-in items
(their own data, on their own device), scores V u; items outside the trained set rank after
them by the DP counts.

Cost per iteration and silo: a sparse (n_k × m) product with an (m × d²) matrix for the users'
solves, and an (m × n_k) product with an (n_k × d²) one for the A_j; memory m·d² floats
(m = 20,000, d = 32: 160 MB in float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.accounting import DPEvent, calibrate_noise
from fedsynth.common.privacy.releases.clipped_sums import noisy_clipped_counts
from fedsynth.common.recommenders.base import Recommender
from fedsynth.common.recommenders.dp_baselines import BaselineRelease
from fedsynth.common.recommenders.ease import outside_scores
from fedsynth.common.runtime.seeding import rng_for

USERS_PER_BLOCK = 4096  # users solved at once (memory: block × d² floats)
AUTO_RANK = (8, 32)  # dp-als-rank 0: √(trained items) within this range
PUBLIC_SEED = 0  # the initial item factors: public randomness, the same in every run (not the noise's seed)


@dataclass(frozen=True)
class DPALSConfig:
    """Rank d (0: from the trained items), ALS iterations T, λ, gravity weight w₀, the trained items' limit and
    signal bar, the counts' clip."""

    rank: int = 0  # 0: automatic, √(trained items) within AUTO_RANK (defaults: the dp-als-* settings')
    iterations: int = 2
    l2: float = 1.0
    unobserved_weight: float = 0.3
    items: int = 20_000
    min_signal: float = 8.0
    counts_clip: float = 4.0

    def __post_init__(self) -> None:
        checks = {
            "dp-als-rank": (self.rank, 0 <= self.rank <= 256, "0 (automatic) or in [1, 256]"),
            "dp-als-iterations": (self.iterations, 1 <= self.iterations <= 50, "in [1, 50]"),
            "dp-als-l2": (self.l2, self.l2 > 0, "positive"),
            "dp-als-unobserved-weight": (self.unobserved_weight, self.unobserved_weight >= 0, "≥ 0"),
            "dp-als-items": (self.items, self.items >= 2, "at least 2"),
        }
        for name, (value, ok, rule) in checks.items():
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {value}.")

    def rank_for(self, items: int) -> int:
        """d: ``rank``, or when 0, √items clipped to :data:`AUTO_RANK` (validation users of the generated data:
        16 beat 32 at 10³ users per silo and about 340 trained items, 32 beat 16 at 10⁴ and about 1,400)."""
        low, high = AUTO_RANK
        return self.rank if self.rank else int(min(max(round(np.sqrt(items)), low), high))


def outer_rows(factors: np.ndarray) -> np.ndarray:
    """Row-wise outer products: (n, d) → (n, d²), row i = vec(f_i f_iᵀ)."""
    return np.einsum("ni,nj->nij", factors, factors).reshape(factors.shape[0], factors.shape[1] ** 2)


def solve_users(rows: sp.csr_matrix, items: np.ndarray, factors: np.ndarray, config: DPALSConfig) -> np.ndarray:
    """Each user's u = (V_Ωᵀ V_Ω + w₀ VᵀV + λI)⁻¹ V_Ωᵀ 1 over the ``items`` columns of binary ``rows``: (n, d)."""
    d = factors.shape[1]
    binary = (rows[:, items] > 0).astype(np.float64).tocsr()
    base = config.unobserved_weight * factors.T @ factors + config.l2 * np.eye(d)
    pairs = outer_rows(factors)
    users = np.zeros((binary.shape[0], d))
    for start in range(0, binary.shape[0], USERS_PER_BLOCK):
        block = binary[start : start + USERS_PER_BLOCK]
        lhs = np.asarray(block @ pairs).reshape(-1, d, d) + base
        rhs = np.asarray(block @ factors)
        users[start : start + block.shape[0]] = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    return users


def clip_rows(factors: np.ndarray, bound: float = 1.0) -> np.ndarray:
    """Each row scaled to L2 norm ≤ ``bound``."""
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return factors * np.minimum(1.0, bound / np.maximum(norms, 1e-12))


def item_statistics(rows: sp.csr_matrix, items: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, ...]:
    """One silo's exact (G (d, d), A (m, d, d), b (m, d)) from clipped factors ``users`` (n, d), c_uj = 1/√|Ω_u|."""
    d = users.shape[1]
    binary = (rows[:, items] > 0).astype(np.float64).tocsr()
    lengths = np.diff(binary.indptr)
    weighted = (sp.diags(1.0 / np.sqrt(np.maximum(lengths, 1))) @ binary).T.tocsr()  # (m, n)
    return users.T @ users, np.asarray(weighted @ outer_rows(users)).reshape(-1, d, d), np.asarray(weighted @ users)


def symmetric_noise_batch(count: int, d: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """(count, d, d) symmetric matrices whose upper triangles (diagonal included) are i.i.d. N(0, std²)."""
    upper = np.triu(rng.normal(0.0, std, (count, d, d)))
    return upper + np.swapaxes(np.triu(upper, 1), 1, 2)


def project_psd(matrix: np.ndarray) -> np.ndarray:
    """The nearest PSD matrix (eigenvalues clipped at 0) to a symmetric ``matrix``."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.maximum(values, 0.0)) @ vectors.T


@dataclass
class ALSRecommender(Recommender):
    """Item factors ``factors`` (m, d) over ``items`` (m,), fold-in by iALS; other items ranked by ``fallback``."""

    items: np.ndarray
    factors: np.ndarray
    fallback: np.ndarray
    l2: float
    unobserved_weight: float
    name: str = "dp-als"

    def fit(self, train: sp.csr_matrix) -> ALSRecommender:
        raise ConfigError("ALSRecommender is fitted from released statistics (dp_als), not from user rows.")

    def __post_init__(self) -> None:
        self._outside = outside_scores(self.fallback)  # once, not per batch (shared with SubsetEASE)

    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        config = DPALSConfig(self.factors.shape[1], 1, self.l2, self.unobserved_weight, max(len(self.items), 2))
        subset = solve_users(fold_in, self.items, self.factors, config) @ self.factors.T
        scores = np.tile(self._outside.astype(np.float64), (fold_in.shape[0], 1))
        scores += subset.min(axis=1, keepdims=True) if subset.size else 0.0  # outside items below every trained one
        scores[:, self.items] = subset
        return scores


def dp_als(
    clients: Sequence[sp.csr_matrix], target_epsilon: float, deltas: Sequence[float], config: DPALSConfig, seed: int
) -> tuple[ALSRecommender, BaselineRelease]:
    """DP-ALS fitted from ``clients`` (binary CSRs), each client at ``target_epsilon`` for its δ.

    Returns the recommender and a :class:`BaselineRelease` holding the item factors (``value``),
    the noise std of the summed A_j, each client's events and δ, and the trained ``items``.
    """
    releases = 3 * config.iterations + 1
    sigmas = [calibrate_noise(target_epsilon, delta, 1.0, releases) for delta in deltas]
    noise_std = float(np.sqrt(sum(s**2 for s in sigmas)))
    counts = noisy_clipped_counts(clients, sigmas, config.counts_clip, seed, "dp-als-counts")
    items = trained_items(counts / config.counts_clip, noise_std, config)  # none: rank by the counts alone
    d = config.rank_for(len(items))
    factors = rng_for(PUBLIC_SEED, "dp-als-init").normal(0.0, 1.0 / np.sqrt(d), (len(items), d))  # public
    for step in range(config.iterations if len(items) else 0):
        gram, lhs, rhs = np.zeros((d, d)), np.zeros((len(items), d, d)), np.zeros((len(items), d))
        for index, (rows, sigma) in enumerate(zip(clients, sigmas, strict=True)):
            rng = rng_for(seed, f"dp-als-{step}-{index}")  # this client's noise, this iteration
            users = clip_rows(solve_users(rows, items, factors, config))
            g, a, b = item_statistics(rows, items, users)
            gram += g + symmetric_noise_batch(1, d, sigma, rng)[0]
            lhs += a + symmetric_noise_batch(len(items), d, sigma, rng)
            rhs += b + rng.normal(0.0, sigma, b.shape)
        factors = solve_items(gram, lhs, rhs, config, noise_std)
    # every planned release is charged, also when the counts stopped it early: whether it stops depends on
    # the data, so only the full plan's ε bounds the mechanism (the path taken alone would understate it)
    events = tuple((DPEvent("dp-als", sigma, 1.0, releases),) for sigma in sigmas)
    release = BaselineRelease(factors, noise_std, events, tuple(deltas), items)
    return ALSRecommender(items, factors, counts, config.l2, config.unobserved_weight), release


def trained_items(counts: np.ndarray, noise_std: float, config: DPALSConfig) -> np.ndarray:
    """The items whose DP count (in units of the clip) clears ``min_signal`` × its noise std, the largest
    ``items`` of them, as sorted indices; none when fewer than ``rank`` do (the factorisation would fit
    noise). Post-processing of the counts release."""
    order = np.argsort(-counts, kind="stable")
    above = min(int(np.sum(counts >= config.min_signal * noise_std)), config.items)
    return np.sort(order[:above]) if above >= config.rank_for(above) else np.zeros(0, dtype=np.int64)


def solve_items(gram: np.ndarray, lhs: np.ndarray, rhs: np.ndarray, config: DPALSConfig, noise_std: float
                ) -> np.ndarray:  # fmt: skip
    """v_j = (A_j + w₀ PSD(G) + (λ + 2s√d) I)⁻¹ b_j for every trained item: (m, d)."""
    d = gram.shape[0]
    ridge = (config.l2 + 2.0 * noise_std * np.sqrt(d)) * np.eye(d)
    system = lhs + config.unobserved_weight * project_psd(gram) + ridge
    return np.linalg.solve(system, rhs[..., None])[..., 0]
