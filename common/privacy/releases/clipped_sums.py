"""Per-user clipped sums over binary CSR rows, and the noisy versions the DP releases use.

Each user's contribution is scaled to a bound before summing, so one user changes a sum by at
most the bound (the sensitivity the Gaussian noise is calibrated to). Used by the pipeline's
DP statistics (:mod:`fedsynth.common.privacy.releases.statistics`) and by the DP baselines
(:mod:`fedsynth.common.recommenders.dp_baselines`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from fedsynth.common.runtime.seeding import rng_for


def clipped_counts(rows: sp.csr_matrix, clip: float) -> np.ndarray:
    """Σ_u x_u · min(1, clip / ‖x_u‖₂) over binary CSR rows (n_users, n_items) → (n_items,) float64."""
    binary = (rows > 0).astype(np.float64).tocsr()
    lengths = np.diff(binary.indptr)
    scale = np.minimum(1.0, clip / np.sqrt(np.maximum(lengths, 1)))
    return np.asarray(binary.T @ scale).ravel()


def clipped_gram(rows: sp.csr_matrix, items: np.ndarray, clip: float) -> np.ndarray:
    """Σ_u s_u² x_u x_uᵀ over the columns ``items`` (M,), s_u = min(1, √clip / ‖x_u‖₂) → dense (M, M) float64."""
    binary = (rows[:, items] > 0).astype(np.float64).tocsr()
    lengths = np.diff(binary.indptr)
    weight = np.minimum(1.0, clip / np.maximum(lengths, 1))  # s² = min(1, clip / ‖x‖²)
    weighted = sp.diags(weight) @ binary
    return np.asarray((binary.T @ weighted).toarray())


def symmetric_noise(size: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """(size, size) symmetric matrix whose upper triangle (diagonal included) is i.i.d. N(0, std²)."""
    upper = np.triu(rng.normal(0.0, std, (size, size)))
    return upper + np.triu(upper, 1).T


def noisy_clipped_counts(
    clients: Sequence[sp.csr_matrix], sigmas: Sequence[float], clip: float, seed: int, purpose: str
) -> np.ndarray:
    """Σ over clients of (their clipped counts + N(0, (σ_k · clip)²) per item): each client adds its own noise.

    Client k draws from ``rng_for(seed, f"{purpose}-{k}")``. Returns (n_items,) float64.
    """
    total = np.zeros(clients[0].shape[1])
    for index, (rows, sigma) in enumerate(zip(clients, sigmas, strict=True)):
        rng = rng_for(seed, f"{purpose}-{index}")
        total += clipped_counts(rows, clip) + rng.normal(0.0, sigma * clip, rows.shape[1])
    return total
