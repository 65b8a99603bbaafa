"""Strong-generalization split: disjoint users, fold-in / target cut per held-out user."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fedsynth.common.config.sections import SplitConfig
from fedsynth.common.data.cleaning_report import CleaningReport
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.split import fold_in_target, split_users
from fedsynth.common.errors import ConfigError, EmptyDataError


def test_users_are_disjoint_and_sized_by_fraction(small_interactions: Interactions) -> None:
    split = split_users(small_interactions, SplitConfig(validation_fraction=0.1, test_fraction=0.2, seed=4))
    n = small_interactions.num_users

    groups = [set(split.train_users), set(split.validation.users), set(split.test.users)]
    assert sum(len(g) for g in groups) == n
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert len(split.validation) == round(0.1 * n) and len(split.test) == round(0.2 * n)
    assert (split.train != small_interactions.matrix[split.train_users]).nnz == 0


def test_fold_in_and_target_partition_each_history(small_interactions: Interactions) -> None:
    split = split_users(small_interactions, SplitConfig(seed=2))
    original = small_interactions.matrix[split.test.users]

    assert (split.test.fold_in + split.test.target != original).nnz == 0
    assert split.test.fold_in.multiply(split.test.target).nnz == 0
    lengths = np.diff(original.indptr)
    n_target = np.diff(split.test.target.indptr)
    assert (n_target >= 1).all() and (np.diff(split.test.fold_in.indptr) >= 1).all()
    assert np.array_equal(n_target, np.clip(np.round(0.2 * lengths), 1, lengths - 1))


def test_fold_in_target_on_a_hand_example() -> None:
    rows = sp.csr_matrix(np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))

    fold_in, target = fold_in_target(rows, 0.8, np.random.default_rng(0))

    assert np.diff(target.indptr).tolist() == [1, 1]
    assert np.diff(fold_in.indptr).tolist() == [4, 1]


def test_deterministic_by_seed(small_interactions: Interactions) -> None:
    a = split_users(small_interactions, SplitConfig(seed=7))
    b = split_users(small_interactions, SplitConfig(seed=7))
    c = split_users(small_interactions, SplitConfig(seed=8))

    assert np.array_equal(a.test.users, b.test.users)
    assert (a.test.target != b.test.target).nnz == 0
    assert not np.array_equal(a.test.users, c.test.users)


def test_users_with_one_item_are_never_held_out() -> None:
    matrix = sp.csr_matrix(np.array([[1, 0, 0]] * 5 + [[1, 1, 0]] * 5, dtype=np.float32))
    data = Interactions(matrix, np.arange(10), np.arange(3), CleaningReport("t"))

    split = split_users(data, SplitConfig(validation_fraction=0.2, test_fraction=0.2))

    assert set(split.validation.users) | set(split.test.users) <= set(range(5, 10))


def test_too_few_eligible_users_and_bad_fractions() -> None:
    matrix = sp.csr_matrix(np.array([[1, 0]] * 9 + [[1, 1]], dtype=np.float32))
    data = Interactions(matrix, np.arange(10), np.arange(2), CleaningReport("t"))

    with pytest.raises(EmptyDataError, match="2\\+ interactions"):
        split_users(data, SplitConfig(validation_fraction=0.2, test_fraction=0.2))
    with pytest.raises(ConfigError, match="sum must be < 1"):
        SplitConfig(validation_fraction=0.5, test_fraction=0.5)
