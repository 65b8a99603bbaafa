"""ItemKNN: item-based nearest neighbours with cosine similarity.

sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|)·sqrt(|U_j|) + shrink). For each target item j only
its ``neighbours`` most similar items are kept; a user's score for j is the sum of sim(i, j)
over the items i of the user's fold-in among those neighbours. The similarity matrix is
built in column chunks and stored sparse (at most ``neighbours`` entries per column), so
memory stays at n_items × chunk floats.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError
from fedsynth.common.recommenders.base import Recommender

_CHUNK = 1024


class ItemKNN(Recommender):
    """Cosine ItemKNN with ``neighbours`` per item and similarity ``shrink``."""

    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrink: float = 0.0):
        if neighbours < 1 or shrink < 0:
            raise ConfigError(f"ItemKNN needs neighbours >= 1 and shrink >= 0, got {neighbours}, {shrink}.")
        self.neighbours = neighbours
        self.shrink = shrink
        self.similarity: sp.csc_matrix | None = None

    def fit(self, train: sp.csr_matrix) -> ItemKNN:
        binary = (train > 0).astype(np.float32).tocsc()
        n_items = binary.shape[1]
        norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel())
        gram_left = binary.T.tocsr()
        k = min(self.neighbours, max(n_items - 1, 1))
        rows, cols, values = [], [], []
        for start in range(0, n_items, _CHUNK):
            stop = min(start + _CHUNK, n_items)
            block = np.asarray((gram_left @ binary[:, start:stop]).todense())  # (n_items, chunk)
            block /= np.outer(norms, norms[start:stop]) + self.shrink + 1e-12
            block[np.arange(start, stop), np.arange(stop - start)] = 0.0  # no self-similarity
            top = np.argpartition(-block, k - 1, axis=0)[:k]  # (k, chunk)
            top_values = np.take_along_axis(block, top, axis=0)
            keep = top_values > 0
            rows.append(top[keep])
            cols.append(np.broadcast_to(np.arange(start, stop), top.shape)[keep])
            values.append(top_values[keep])
        self.similarity = sp.csc_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items)
        )
        return self

    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.similarity is not None, "call fit() first"
        return np.asarray(((fold_in > 0).astype(np.float32) @ self.similarity).todense())
