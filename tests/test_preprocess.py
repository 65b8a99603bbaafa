"""Preprocessing: every removal counted, implicit rules, k-core, contiguous ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.config.sections import PreprocessConfig
from fedsynth.common.data.cleaning_report import CleaningReport
from fedsynth.common.data.preprocess import k_core, preprocess
from fedsynth.common.data.table import InteractionTable
from fedsynth.common.errors import EmptyDataError


def make_table(rows: list[tuple[object, object, float, float]], feedback: str = "rating") -> InteractionTable:
    frame = pd.DataFrame(rows, columns=["user", "item", "value", "timestamp"])
    report = CleaningReport("test")
    report.add("rows read", len(frame), len(frame))
    return InteractionTable(frame, feedback, report)  # type: ignore[arg-type]


def test_duplicates_keep_the_latest_and_are_counted() -> None:
    table = make_table([(1, 1, 5, 100), (1, 1, 2, 200), (1, 2, 4, 50), (2, 1, 4, 1)])

    data = preprocess(table, PreprocessConfig(min_user_interactions=1))

    step = next(s for s in data.report.steps if s.name.startswith("duplicate"))
    assert step.removed == 1
    # the later rating (2) of (1, 1) won, so it is no positive; user 1 keeps item 2 only
    assert data.matrix[0].indices.tolist() == [1]


def test_default_implicit_rules_by_feedback_kind() -> None:
    rows = [(1, i, float(v), 0) for i, v in enumerate([5, 4, 3.5, 0, 1])]

    ratings = preprocess(make_table(rows, "rating"), PreprocessConfig(min_user_interactions=1))
    counts = preprocess(make_table(rows, "count"), PreprocessConfig(min_user_interactions=1))
    custom = preprocess(make_table(rows, "rating"), PreprocessConfig(implicit_threshold=3.5, min_user_interactions=1))

    assert ratings.num_interactions == 2  # >= 4
    assert counts.num_interactions == 4  # > 0
    assert custom.num_interactions == 3


def test_k_core_is_iterative() -> None:
    # user 0: items 0,1 ; user 1: items 0,1 ; user 2: items 1,2 ; item 2 only by user 2.
    users = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 0, 1, 1, 2])

    keep = k_core(users, items, min_user=2, min_item=2)

    # item 2 drops (1 user) → user 2 has 1 item and drops → item 1 still has 2 users.
    assert keep.tolist() == [True, True, True, True, False, False]


def test_reindexing_is_contiguous_and_maps_back() -> None:
    table = make_table([(10, 500, 5, 0), (10, 700, 5, 0), (30, 700, 5, 0), (30, 900, 5, 0)])

    data = preprocess(table, PreprocessConfig(min_user_interactions=1))

    assert data.user_ids.tolist() == [10, 30]
    assert data.item_ids.tolist() == [500, 700, 900]
    assert data.matrix.toarray().tolist() == [[1, 1, 0], [0, 1, 1]]
    assert data.matrix.dtype == np.float32


def test_every_removed_row_is_counted() -> None:
    rows = [(u, i, 5.0 if (u + i) % 3 else 2.0, 0) for u in range(20) for i in range(u % 7)]
    table = make_table(rows)

    data = preprocess(table, PreprocessConfig(min_user_interactions=3))

    assert len(rows) - data.report.rows_removed == data.num_interactions


def test_nothing_positive_is_a_clear_error() -> None:
    with pytest.raises(EmptyDataError, match="--implicit-threshold"):
        preprocess(make_table([(1, 1, 2.0, 0)]), PreprocessConfig())


def test_empty_after_k_core_names_the_option() -> None:
    with pytest.raises(EmptyDataError, match="--min-user-interactions"):
        preprocess(make_table([(1, 1, 5.0, 0), (2, 2, 5.0, 0)]), PreprocessConfig(min_user_interactions=2))
