"""MostPopular: every user gets the items most users interacted with."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fedsynth.common.recommenders.base import Recommender


class MostPopular(Recommender):
    """Scores item i by the number of training users who have it."""

    name = "popularity"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> MostPopular:
        """A MostPopular ranking by given (e.g. DP noisy) item counts (n_items,)."""
        recommender = cls()
        recommender.counts = np.asarray(counts, dtype=np.float64).ravel()
        return recommender

    def fit(self, train: sp.csr_matrix) -> MostPopular:
        self.counts = np.asarray((train > 0).sum(axis=0), dtype=np.float64).ravel()
        return self

    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.counts is not None, "call fit() first"
        return np.tile(self.counts, (fold_in.shape[0], 1))
