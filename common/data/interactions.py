"""The user × item interaction matrix with its id maps; never dense."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsynth.common.data.cleaning_report import CleaningReport


@dataclass(frozen=True)
class Interactions:
    """Binary implicit-feedback interactions.

    Attributes:
        matrix: CSR, shape (n_users, n_items), float32 values 1.0 (one stored entry per pair).
        user_ids: shape (n_users,), original user id of each row.
        item_ids: shape (n_items,), original item id of each column.
        user_attributes: DataFrame with n_users rows aligned to the matrix rows (or None).
        report: every step that removed rows, with counts.
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    report: CleaningReport
    user_attributes: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        assert self.matrix.shape == (len(self.user_ids), len(self.item_ids)), self.matrix.shape
        if self.user_attributes is not None:
            assert len(self.user_attributes) == len(self.user_ids)

    @property
    def num_users(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def num_interactions(self) -> int:
        return int(self.matrix.nnz)

    def summary(self) -> dict[str, float | int]:
        lengths = np.diff(self.matrix.indptr)
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "density": self.num_interactions / max(1, self.num_users * self.num_items),
            "median_history": float(np.median(lengths)) if len(lengths) else 0.0,
        }
