"""EASE (Steck 2019): a closed-form item × item linear autoencoder with a zero diagonal.

B = I − P · diag(1 / diag(P)), P = (XᵀX + λI)⁻¹; scores = X_fold_in · B. The Gram matrix and
its inverse are dense (M², float32). The fit holds one M × M float32 buffer (plus one
temporary of the same size inside torch's Cholesky inverse, and column blocks): the Gram is
accumulated block by block from the sparse rows, factorised and inverted in place, scaled in
place and returned as B. M = 20,000 items: 1.6 GB per buffer, 27,000: 2.9 GB. A catalogue
whose buffers do not fit in the memory available now is refused before anything is computed
(:func:`check_dense_fits`), naming the size and what to do.

Why earlier versions stopped at 10,000 items: on Last.fm's 17,632 items the run ended
``finished:failed`` with no error inside the ServerApp, which was read as a segfault in
OpenBLAS. It was not a crash: scipy's LAPACK wrappers (``inv``, ``potrf``/``potri``) hold the
GIL for the whole factorisation (about a minute at that size on 2 cores, with several
full-size copies), Flower's ServerApp heartbeat thread could not run for longer than its
patience (2 × 30 s), and the SuperLink revoked the run's token. torch's factorisation releases
the GIL, so the heartbeat keeps going (docs/scale.md, "EASE at 20,000 items").
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
import torch

from fedsynth.common.errors import ConfigError
from fedsynth.common.recommenders.base import Recommender

BLOCK = 2048  # columns per block of the Gram accumulation


def available_memory_bytes() -> int:
    """Bytes the kernel reports as available now (``MemAvailable`` in /proc/meminfo); physical RAM elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_dense_fits(n_items: int, what: str, copies: float = 2.25) -> None:
    """Refuse a dense ``n_items``² float32 buffer (times ``copies``) that exceeds available memory."""
    needed = copies * 4 * n_items**2
    available = available_memory_bytes()
    if needed > available:
        raise ConfigError(
            f"{what} needs a dense {n_items:,} × {n_items:,} float32 matrix ({needed / 2**30:.1f} GiB with "
            f"temporaries) but only {available / 2**30:.1f} GiB of memory is available. Filter rare items "
            "(--min-item-interactions), leave this recommender out (--recommenders), or use a larger machine."
        )


def dense_gram(rows: sp.csr_matrix) -> np.ndarray:
    """XᵀX of the binarised ``rows`` (users, M) as a dense (M, M) float32, built block by block.

    Never forms the sparse product as a whole (its nnz can approach M², at 12 bytes each).
    """
    binary = sp.csc_matrix((rows > 0).astype(np.float32))
    n_items = binary.shape[1]
    gram = np.empty((n_items, n_items), dtype=np.float32)
    transposed = binary.T.tocsr()
    for start in range(0, n_items, BLOCK):
        stop = min(start + BLOCK, n_items)
        gram[:, start:stop] = (transposed @ binary[:, start:stop]).toarray()
    return gram


def spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite float32 C-ordered (M, M) matrix, **overwriting** it.

    Cholesky factor and inverse by torch (``linalg.cholesky_ex`` then ``cholesky_inverse``, both
    with ``out`` the same buffer; torch takes one more M × M temporary inside). torch releases
    the GIL during the factorisation, which scipy's LAPACK wrappers do not: a ServerApp that
    holds the GIL for a minute starves Flower's heartbeat thread and the SuperLink ends the run
    as failed with no error (what happened at 17,632 items, see the module docstring).
    At 5,000 items: 1.7 s, relative error 4e-7 vs float64; 17,632 items: 51 s on 2 cores.
    """
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous and matrix.shape[0] == matrix.shape[1]
    tensor = torch.from_numpy(matrix)
    _, info = torch.linalg.cholesky_ex(tensor, out=(tensor, torch.empty((), dtype=torch.int32)))
    if int(info) != 0:
        raise ConfigError(f"EASE's Gram matrix is not positive definite (leading minor {int(info)}); raise --ease-l2.")
    torch.cholesky_inverse(tensor, out=tensor)
    return matrix


def ease_weights(gram: np.ndarray, l2: float, overwrite: bool = False) -> np.ndarray:
    """EASE's B (M, M) float32 from a Gram matrix XᵀX (M, M): P = (G + λI)⁻¹, B_ij = −P_ij / P_jj, diag(B) = 0.

    With ``overwrite`` and a C-ordered float32 ``gram``, B is computed in ``gram``'s own buffer.
    """
    matrix = np.ascontiguousarray(gram, dtype=np.float32) if overwrite else np.array(gram, dtype=np.float32, order="C")
    matrix[np.diag_indices_from(matrix)] += l2
    spd_inverse(matrix)
    diagonal = np.diag(matrix).copy()
    np.divide(matrix, -diagonal[None, :], out=matrix)
    matrix[np.diag_indices_from(matrix)] = 0.0
    return matrix


class EASE(Recommender):
    """EASE with L2 regularisation ``l2`` (λ); ``max_items`` an optional hard limit on the catalogue."""

    name = "ease"

    def __init__(self, l2: float = 300.0, max_items: int | None = None):
        if l2 <= 0:
            raise ConfigError(f"EASE's l2 (lambda) must be positive, got {l2}.")
        self.l2 = l2
        self.max_items = max_items
        self.weights: np.ndarray | None = None

    def fit(self, train: sp.csr_matrix) -> EASE:
        n_items = train.shape[1]
        if self.max_items is not None and n_items > self.max_items:
            raise ConfigError(
                f"EASE needs a dense {n_items:,} × {n_items:,} matrix, above its limit of {self.max_items:,} items. "
                "Filter rare items (--min-item-interactions) or raise the limit if memory allows."
            )
        check_dense_fits(n_items, "EASE")
        self.weights = ease_weights(dense_gram(train), self.l2, overwrite=True)
        return self

    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.weights is not None, "call fit() first"
        return np.asarray((fold_in > 0).astype(np.float32) @ self.weights)


def outside_scores(fallback: np.ndarray) -> np.ndarray:
    """(n_items,) float32 in [−2, −1): every item's rank by ``fallback`` (0 = the lowest), scaled; a model over a
    subset of the items adds its batch's lowest subset score, so every outside item ranks below every subset one."""
    ranks = np.argsort(np.argsort(fallback, kind="stable"), kind="stable")
    return (ranks / max(len(ranks), 1)).astype(np.float32) - 2.0


class SubsetEASE(Recommender):
    """EASE over a subset of M items (DP-EASE), the other items ranked after them by ``fallback``.

    ``items`` (M,) item indices, ``weights`` (M, M) EASE's B over them, ``fallback`` (n_items,)
    scores that order every item (e.g. DP counts); items outside the subset always score
    below every subset item.
    """

    name = "dp-ease"

    def __init__(self, items: np.ndarray, weights: np.ndarray, fallback: np.ndarray):
        self.items = np.asarray(items, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.fallback = np.asarray(fallback, dtype=np.float64)
        self._outside = outside_scores(self.fallback)  # computed once, not per batch

    @classmethod
    def from_gram(cls, gram: np.ndarray, items: np.ndarray, l2: float, fallback: np.ndarray) -> SubsetEASE:
        """Fit on a (noisy) Gram matrix over ``items``."""
        return cls(items, ease_weights(gram, l2), fallback)

    def fit(self, train: sp.csr_matrix) -> SubsetEASE:
        raise ConfigError("SubsetEASE is fitted from a Gram matrix (from_gram), not from user rows.")

    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        binary = (fold_in[:, self.items] > 0).astype(np.float32)
        subset_scores = np.asarray(binary @ self.weights)
        scores = np.tile(self._outside, (fold_in.shape[0], 1))
        low = subset_scores.min(axis=1, keepdims=True) if subset_scores.size else 0.0
        scores += low  # every outside item below every subset item (outside scores are in [low − 2, low − 1))
        scores[:, self.items] = subset_scores
        return scores
