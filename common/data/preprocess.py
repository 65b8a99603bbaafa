"""Cleaning an InteractionTable into binary implicit-feedback Interactions, with counted effects.

Steps, in order, each recorded in the report: duplicate (user, item) pairs (the latest by
timestamp is kept, else the last row), implicit-feedback conversion, iterative k-core
filtering of users and items, contiguous re-indexing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsynth.common.config.sections import PreprocessConfig
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.table import InteractionTable
from fedsynth.common.errors import EmptyDataError

DEFAULT_RATING_THRESHOLD = 4.0


def implicit_rule(table: InteractionTable, threshold: float | None) -> tuple[np.ndarray, str]:
    """Boolean mask of rows that count as positives, and the rule in words."""
    values = table.frame["value"].to_numpy()
    if threshold is not None:
        return values >= threshold, f"value >= {threshold:g}"
    if table.feedback == "rating":
        return values >= DEFAULT_RATING_THRESHOLD, f"rating >= {DEFAULT_RATING_THRESHOLD:g}"
    if table.feedback == "count":
        return values > 0, "play count > 0"
    return np.ones(len(values), dtype=bool), "every row (implicit data)"


def drop_duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per (user, item): the latest timestamp, ties and missing times by file order."""
    order = frame.assign(_row=np.arange(len(frame))).sort_values(
        ["timestamp", "_row"], na_position="first", kind="stable"
    )
    kept = order.drop_duplicates(["user", "item"], keep="last").sort_values("_row")
    return kept.drop(columns="_row")


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Mask of rows kept by iterative k-core filtering (users ≥ min_user rows, items ≥ min_item rows).

    ``users`` and ``items`` are integer codes of equal length; repeats until stable.
    """
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        new_keep = keep & (user_counts[users] >= min_user) & (item_counts[items] >= min_item)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def preprocess(table: InteractionTable, config: PreprocessConfig) -> Interactions:
    """Turn ``table`` into binary Interactions; raises EmptyDataError naming the step that emptied it."""
    report = table.report
    frame = table.frame
    source = report.source

    before = len(frame)
    frame = drop_duplicates(frame)
    report.add("duplicate (user, item) pairs", before, len(frame), "kept the latest by timestamp")

    positive, rule = implicit_rule(InteractionTable(frame, table.feedback, report), config.implicit_threshold)
    before = len(frame)
    frame = frame[positive]
    report.add("implicit feedback", before, len(frame), f"positives: {rule}")
    if frame.empty:
        raise EmptyDataError(
            f"{source}: no interaction is a positive under the rule {rule}. "
            "Lower --implicit-threshold or check the rating column."
        )

    user_codes, user_ids = pd.factorize(frame["user"], sort=True)
    item_codes, item_ids = pd.factorize(frame["item"], sort=True)
    keep = k_core(user_codes, item_codes, config.min_user_interactions, config.min_item_interactions)
    before = len(frame)
    report.add(
        "k-core filter",
        before,
        int(keep.sum()),
        f"users >= {config.min_user_interactions}, items >= {config.min_item_interactions} interactions; "
        f"users {len(user_ids):,} → {len(np.unique(user_codes[keep])):,}, "
        f"items {len(item_ids):,} → {len(np.unique(item_codes[keep])):,}",
    )
    if not keep.any():
        raise EmptyDataError(
            f"{source}: no user is left after k-core filtering (users need >= {config.min_user_interactions} "
            f"and items >= {config.min_item_interactions} positives). Lower --min-user-interactions or "
            "--min-item-interactions."
        )
    frame = frame[keep]

    rows, user_index = pd.factorize(frame["user"], sort=True)
    cols, item_index = pd.factorize(frame["item"], sort=True)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(user_index), len(item_index))
    )
    matrix.sum_duplicates()
    attributes = None
    if table.user_attributes is not None:
        attributes = table.user_attributes.reindex(user_index).reset_index(drop=True)
        missing = int(attributes.isna().any(axis=1).sum())
        if missing:
            report.warn(f"{missing:,} user(s) have no attributes; they show as missing in attribute partitions.")
        attributes = attributes.fillna("missing")
    return Interactions(matrix, np.asarray(user_index), np.asarray(item_index), report, attributes)
