"""Ranking metrics against values computed by hand on tiny matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from fedsynth.common.evaluation.metrics import RankingMetrics, mask_seen, top_k_items


def rows(*sets: set[int], n_items: int = 6) -> sp.csr_matrix:
    dense = np.zeros((len(sets), n_items), dtype=np.float32)
    for r, items in enumerate(sets):
        dense[r, list(items)] = 1
    return sp.csr_matrix(dense)


SCORES = np.array([[10.0, 5, 4, 3, 2, 1], [0.0, 1, 2, 3, 4, 9]])
FOLD_IN = rows({0}, {5})
TARGET = rows({2, 4}, {0})


def test_seen_items_are_masked_and_never_recommended() -> None:
    masked = mask_seen(SCORES, FOLD_IN)

    assert masked[0, 0] == -np.inf and masked[1, 5] == -np.inf
    assert top_k_items(masked, 3).tolist() == [[1, 2, 3], [4, 3, 2]]


def test_hand_computed_values() -> None:
    metrics = RankingMetrics(ks=(1, 2, 4, 5), num_items=6)

    metrics.add(SCORES, FOLD_IN, TARGET)
    result = metrics.result()

    log2 = math.log2
    # user 0 ranking: 1, 2, 3, 4, 5 with targets {2, 4}: hits at ranks 2 and 4.
    # user 1 ranking: 4, 3, 2, 1, 0 with target {0}: hit at rank 5.
    ndcg0_2 = (1 / log2(3)) / (1 + 1 / log2(3))
    ndcg0_4 = (1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3))
    assert result["recall@1"] == pytest.approx(0.0)
    assert result["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["recall@4"] == pytest.approx((2 / 2 + 0) / 2)
    assert result["recall@5"] == pytest.approx((2 / 2 + 1 / 1) / 2)
    assert result["ndcg@2"] == pytest.approx(ndcg0_2 / 2)
    assert result["ndcg@4"] == pytest.approx(ndcg0_4 / 2)
    assert result["ndcg@5"] == pytest.approx((ndcg0_4 + 1 / log2(6)) / 2)
    assert result["hitrate@1"] == 0.0 and result["hitrate@2"] == 0.5 and result["hitrate@5"] == 1.0
    assert result["coverage@1"] == pytest.approx(2 / 6)  # items 1 and 4
    assert result["coverage@2"] == pytest.approx(4 / 6)  # {1, 2} ∪ {4, 3}


def test_recall_is_normalised_by_min_k_and_target_size() -> None:
    metrics = RankingMetrics(ks=(1,), num_items=6)

    metrics.add(np.array([[0.0, 9, 8, 7, 6, 5]]), rows({0}), rows({1, 2, 3}))

    assert metrics.result()["recall@1"] == 1.0  # 1 hit out of min(1, 3)
    assert metrics.result()["ndcg@1"] == 1.0


def test_users_without_target_are_skipped_and_counted() -> None:
    metrics = RankingMetrics(ks=(2,), num_items=6)

    metrics.add(SCORES, FOLD_IN, rows({2, 4}, set()))

    assert metrics.users == 1 and metrics.users_without_target == 1
    assert metrics.result()["recall@2"] == pytest.approx(0.5)


def test_merging_batches_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((40, 30))
    fold_in = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    target = sp.csr_matrix(((rng.random((40, 30)) < 0.2) & (fold_in.toarray() == 0)).astype(np.float32))
    whole = RankingMetrics(ks=(5, 10), num_items=30)
    whole.add(scores, fold_in, target)

    merged = RankingMetrics(ks=(5, 10), num_items=30)
    for part in (slice(0, 13), slice(13, 40)):
        piece = RankingMetrics(ks=(5, 10), num_items=30)
        piece.add(scores[part], fold_in[part], target[part])
        merged.merge(piece)

    assert merged.result() == pytest.approx(whole.result())
    assert merged.users == whole.users


def test_perfect_ranking_scores_one() -> None:
    metrics = RankingMetrics(ks=(3,), num_items=6)

    metrics.add(np.array([[0.0, 0, 5, 0, 4, 0]]), rows(set()), rows({2, 4}))

    assert metrics.result()["ndcg@3"] == pytest.approx(1.0)
    assert metrics.result()["recall@3"] == pytest.approx(1.0)
