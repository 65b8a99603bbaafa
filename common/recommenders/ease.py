"""EASE (Steck 2019): a closed-form item × item linear autoencoder with a zero diagonal.

B = I − P · diag(1 / diag(P)), P = (XᵀX + λI)⁻¹; scores = X_fold_in · B. The Gram matrix and
its inverse are dense (n_items²), so catalogues above ``max_items`` are refused with a
clear error rather than exhausting memory (20,000 items ≈ 1.6 GB per float32 matrix).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from common.errors import ConfigError
from common.recommenders.base import Recommender


def spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite float32 matrix by Cholesky (LAPACK potrf + potri).

    Twice as fast as an LU inverse, and avoids ``scipy.linalg.inv``, which crashed (segfault)
    on a 17,617² matrix with scipy 1.17. At 6,000 items: 4.9 s, relative error 6e-7 vs float64.
    """
    factor, info = lapack.spotrf(matrix, lower=False, overwrite_a=True)
    if info == 0:
        inverse, info = lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ConfigError(f"EASE's Gram matrix is not positive definite (LAPACK info {info}); raise --ease-l2.")
    return np.triu(inverse) + np.triu(inverse, 1).T


class EASE(Recommender):
    """EASE with L2 regularisation ``l2`` (λ)."""

    name = "ease"

    def __init__(self, l2: float = 300.0, max_items: int = 20_000):
        if l2 <= 0:
            raise ConfigError(f"EASE's l2 (lambda) must be positive, got {l2}.")
        self.l2 = l2
        self.max_items = max_items
        self.weights: np.ndarray | None = None

    def fit(self, train: sp.csr_matrix) -> EASE:
        n_items = train.shape[1]
        if n_items > self.max_items:
            raise ConfigError(
                f"EASE needs a dense {n_items:,} × {n_items:,} matrix, above its limit of {self.max_items:,} items. "
                "Filter rare items (--min-item-interactions) or raise the limit if memory allows."
            )
        binary = (train > 0).astype(np.float32)
        gram = (binary.T @ binary).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = spd_inverse(gram)
        weights = inverse / (-np.diag(inverse))
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights
        return self

    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.weights is not None, "call fit() first"
        return np.asarray((fold_in > 0).astype(np.float32) @ self.weights)
