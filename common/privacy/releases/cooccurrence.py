"""Second-order DP statistics: each client's per-user-normalised item co-occurrence over M chosen items.

A user with binary history x ∈ {0, 1}^n_items (length ℓ = ‖x‖₁ = ‖x‖₂²) contributes

    x_M x_Mᵀ / ℓ                                                     (M, M)

where x_M keeps the M items of ``items`` (chosen by the server from the summed first-order DP
counts, so the choice is post-processing). Its Frobenius norm is ‖x_M‖² / ℓ ≤ 1 for every
user, so adding or removing one user moves the sum S = Σ_u x_M x_Mᵀ / ℓ by at most 1 in
Frobenius norm, and the vector of S's upper triangle (diagonal included), which determines S,
by at most 1 in L2. The client releases that upper triangle plus N(0, σ²) per entry: one
Gaussian mechanism of sensitivity 1, one ledger event (σ, q = 1, 1 step), mirrored into a
symmetric matrix. Every user counts with weight 1/ℓ, so long histories (ℓ² pairs) do not
dominate, and no user is clipped away.

Size: a client sends M(M + 1)/2 float64 numbers (M = 500: 1.0 MB; 2,000: 16 MB) and the
server holds dense M × M matrices, so M is capped at :data:`MAX_MARGINAL_ITEMS`. For larger
catalogues only the top-M block by DP popularity is released; the items outside it keep their
first-order counts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.accounting import DPEvent
from fedsynth.common.privacy.releases.clipped_sums import symmetric_noise
from fedsynth.common.secagg.skellam import SkellamQuantizer

COOCCURRENCE = "cooccurrence"  # the ledger's name for this release, and its message action
MAX_MARGINAL_ITEMS = 4_000
MIN_SIGNAL_DEFAULT = 0.6  # of second_order_pays: chosen on validation users (docs/results.md)


def popularity_eigenvalue(item_counts: np.ndarray, items: np.ndarray) -> float:
    """λ̂ = ‖c_M‖² / Σc: what S's popularity direction carries if items were chosen independently.

    A user of ℓ items drawn with probabilities q = c / Σc has x_M·v ≈ ℓ‖q_M‖ along v = q_M/‖q_M‖,
    so vᵀ S v = Σ_u (x_M·v)²/ℓ_u ≈ Σ_u ℓ_u ‖q_M‖² = Σc · ‖q_M‖². Read off the first-order release
    (post-processing); it under-estimates S's leading eigenvalue when tastes cluster (generated data,
    10³ users per silo: 278 predicted, 543 released), so it is a conservative signal scale.
    """
    counts = np.clip(np.asarray(item_counts, dtype=np.float64), 0.0, None)
    total = float(counts.sum())
    return float(np.sum(counts[items] ** 2) / total) if total > 0 else 0.0


def noise_edge(noise_std: float, size: int) -> float:
    """2σ√M: the top of the spectrum of an M × M symmetric noise matrix with i.i.d. N(0, σ²) entries
    (semicircle law). A direction of the noisy release above it carries signal; below it, the release says
    nothing the noise could not have made."""
    return 2.0 * noise_std * float(np.sqrt(size))


def signal_ratio(item_counts: np.ndarray, items: np.ndarray, noise_std: float) -> float:
    """:func:`popularity_eigenvalue` ÷ :func:`noise_edge`: how far the co-occurrence over ``items`` (noise std
    ``noise_std`` per entry of the sum) is predicted to stand above its noise; ∞ without noise. Post-processing
    of released counts and of a noise std (public): costs no ε. It decides whether the release pays
    (:func:`second_order_pays`) and how long the server fits the models to it
    (:func:`fedsynth.common.synthesis.marginal_fit.auto_fit_steps`)."""
    if not noise_std >= 0:  # NaN or negative: no ratio (every comparison with it is False)
        return float("nan")
    edge = noise_edge(noise_std, len(items))
    signal = popularity_eigenvalue(item_counts, items)
    return signal / edge if edge > 0 else float("inf")


def second_order_pays(item_counts: np.ndarray, items: np.ndarray, noise_std: float, min_signal: float) -> bool:
    """Whether the co-occurrence over ``items``, released with noise std ``noise_std`` per entry of the
    sum, is expected to carry structure: :func:`popularity_eigenvalue` ≥ ``min_signal`` × the noise's
    spectral edge 2σ√M. Below it the release would be mostly noise (no taste direction clears the
    edge), and its budget buys more as a second first-order release. Post-processing of released
    counts and of the plan (no data): costs no ε. ``min_signal`` 0: always release it.
    """
    return signal_ratio(item_counts, items, noise_std) >= min_signal


def marginal_items(item_counts: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` items with the largest (noisy) counts, as sorted indices (post-processing of a release)."""
    count = min(count, len(item_counts))
    return np.sort(np.argsort(-np.asarray(item_counts), kind="stable")[:count])


def check_items(items: np.ndarray, num_items: int) -> np.ndarray:
    """``items`` as int64 if they are distinct indices of the catalogue, else a ConfigError."""
    items = np.asarray(items, dtype=np.int64)
    if items.ndim != 1 or len(items) < 2 or len(np.unique(items)) != len(items):
        raise ConfigError(f"the co-occurrence release needs at least 2 distinct items, got {len(items)}.")
    if items.min() < 0 or items.max() >= num_items or len(items) > MAX_MARGINAL_ITEMS:
        raise ConfigError(
            f"co-occurrence items must be catalogue indices in [0, {num_items}) and at most "
            f"{MAX_MARGINAL_ITEMS:,}; got {len(items)} items in [{items.min()}, {items.max()}]."
        )
    return items


def normalised_cooccurrence(rows: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """Σ_u x_M x_Mᵀ / ℓ_u over binary CSR rows (n_users, n_items) → dense (M, M) float64; ℓ = full length."""
    binary = (rows > 0).astype(np.float64).tocsr()
    lengths = np.maximum(np.diff(binary.indptr), 1)
    block = binary[:, items]
    return np.asarray((block.T @ (sp.diags(1.0 / lengths) @ block)).toarray())


def upper(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle (diagonal included) of a square (M, M) matrix, row by row: (M(M + 1)/2,)."""
    return matrix[np.triu_indices(matrix.shape[0])]


def from_upper(values: np.ndarray, size: int) -> np.ndarray:
    """The symmetric (size, size) matrix whose upper triangle is ``values`` (inverse of :func:`upper`)."""
    matrix = np.zeros((size, size))
    matrix[np.triu_indices(size)] = values
    return matrix + np.triu(matrix, 1).T


@dataclass(frozen=True)
class NoisyCooccurrence:
    """The summed (over clients) noisy co-occurrence over ``items``; ``noise_std`` per entry of the sum (public)."""

    items: np.ndarray  # (M,) catalogue indices
    matrix: np.ndarray  # (M, M) symmetric
    noise_std: float

    def __add__(self, other: NoisyCooccurrence) -> NoisyCooccurrence:
        if not np.array_equal(self.items, other.items):
            raise ValueError("co-occurrence releases over different items cannot be summed")
        return NoisyCooccurrence(
            self.items, self.matrix + other.matrix, float(np.hypot(self.noise_std, other.noise_std))
        )

    def signal_subspace(self) -> tuple[np.ndarray, np.ndarray]:
        """(V (M, r), Λ (r,)): the eigen-directions of the noisy matrix with eigenvalue above its
        :func:`noise_edge` 2σ√M. A fit constrained on span(V) only leaves the other directions free
        instead of forcing them to 0."""
        values, vectors = self.spectrum
        keep = values > noise_edge(self.noise_std, len(self.items))
        return vectors[:, keep], values[keep]

    @cached_property
    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """(eigenvalues (M,) ascending, eigenvectors (M, M)) of the noisy matrix, computed once per release
        (O(M³): the fit, the λ choice and the report all read it)."""
        return np.linalg.eigh(self.matrix)

    def signal_rank(self) -> int:
        """r: how many directions of the release clear the noise edge (:meth:`signal_subspace`). The first is
        popularity's; r ≥ 2 means taste structure beyond it that the fitted models can reproduce."""
        return int(self.signal_subspace()[0].shape[1])


def signal_rank_of(release: NoisyCooccurrence | None) -> int:
    """:meth:`NoisyCooccurrence.signal_rank` of ``release``; 0 when no co-occurrence was released."""
    return release.signal_rank() if release is not None else 0


def noisy_cooccurrence(
    rows: sp.csr_matrix, items: np.ndarray, noise_multiplier: float, rng: np.random.Generator
) -> NoisyCooccurrence:
    """This client's co-occurrence over ``items`` plus symmetric N(0, σ²) noise (σ = 0: exact)."""
    exact = normalised_cooccurrence(rows, items)
    if noise_multiplier <= 0:
        return NoisyCooccurrence(items, exact, 0.0)
    return NoisyCooccurrence(items, exact + symmetric_noise(len(items), noise_multiplier, rng), float(noise_multiplier))


def cooccurrence_contributions(rows: sp.csr_matrix, items: np.ndarray) -> sp.csr_matrix:
    """Each user's upper triangle of x_M x_Mᵀ / ℓ as CSR (n_users, M(M + 1)/2); row norms ≤ 1.

    Column of the pair (i, j), i ≤ j, is :func:`upper`'s position of it. Sparse: a user with k of
    the M items has k(k + 1)/2 entries. Their sum is :func:`upper` of :func:`normalised_cooccurrence`.
    """
    binary = (rows > 0).astype(np.float64).tocsr()
    lengths = np.maximum(np.diff(binary.indptr), 1)
    block = binary[:, items].tocsr()
    size = len(items)
    offsets = np.concatenate([[0], np.cumsum(np.arange(size, 0, -1))[:-1]])  # where upper row i starts
    indptr, indices, data = [0], [], []
    for user in range(block.shape[0]):
        held = np.sort(block.indices[block.indptr[user] : block.indptr[user + 1]])
        first, second = np.triu_indices(len(held))
        indices.append(offsets[held[first]] + held[second] - held[first])
        data.append(np.full(len(first), 1.0 / lengths[user]))
        indptr.append(indptr[-1] + len(first))
    return sp.csr_matrix(
        (np.concatenate([[], *data]), np.concatenate([np.zeros(0, np.int64), *indices]), np.asarray(indptr)),
        shape=(block.shape[0], size * (size + 1) // 2),
    )


def cooccurrence_quantizer(size: int) -> SkellamQuantizer:
    """How a secure release rounds :func:`cooccurrence_contributions` (norm ≤ 1) over ``size`` items to integers."""
    return SkellamQuantizer.for_clip(1.0, size * (size + 1) // 2)


def cooccurrence_event(noise_multiplier: float) -> DPEvent:
    """The ledger event of one release of :func:`noisy_cooccurrence` (sensitivity 1) at ``noise_multiplier``."""
    return DPEvent(COOCCURRENCE, noise_multiplier, 1.0, 1)
