"""The interface every central recommender implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from fedsynth.common.evaluation.metrics import mask_seen, top_k_items


class Recommender(ABC):
    """Trained on a user × item matrix, scores held-out users from their fold-in items.

    ``fit`` takes the training users' CSR matrix (n_users, n_items); ``score`` takes a CSR
    batch of fold-in rows (b, n_items) and returns dense scores (b, n_items), higher is better.
    """

    name: str = "recommender"

    @abstractmethod
    def fit(self, train: sp.csr_matrix) -> Recommender:
        """Train on ``train`` (binary CSR, users × items); returns self."""

    @abstractmethod
    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        """Scores (b, n_items) for the fold-in rows; must be called after ``fit``."""

    def recommend(self, fold_in: sp.csr_matrix, k: int) -> np.ndarray:
        """The k best unseen items per user, best first: (b, k) item indices."""
        return top_k_items(mask_seen(self.score(fold_in), fold_in), k)
