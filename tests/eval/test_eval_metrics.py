"""Metrics against values computed by hand (see the arithmetic in each test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opendisco.eval import (
    accuracy,
    average_precision_at_k,
    catalogue_coverage,
    gini,
    hit_matrix,
    hit_rate_at_k,
    impressions,
    ndcg_at_k,
    novelty,
    recall_at_k,
    top_k,
)

RECS = np.array([[1, 2, 3, 4]])
TARGETS = [np.array([2, 4, 9])]


def test_hit_matrix_marks_relevant_ranks_and_ignores_padding() -> None:
    assert hit_matrix(RECS, TARGETS).tolist() == [[False, True, False, True]]
    assert hit_matrix(np.array([[-1, -1]]), [np.array([-1])]).tolist() == [[False, False]]


def test_recall_hitrate_at_k() -> None:
    hits = hit_matrix(RECS, TARGETS)
    assert recall_at_k(hits, TARGETS, 4)[0] == pytest.approx(2 / 3)
    assert recall_at_k(hits, TARGETS, 2)[0] == pytest.approx(1 / 3)
    assert recall_at_k(hits, TARGETS, 1)[0] == 0.0
    assert hit_rate_at_k(hits, 1)[0] == 0.0
    assert hit_rate_at_k(hits, 2)[0] == 1.0


def test_ndcg_at_k() -> None:
    hits = hit_matrix(RECS, TARGETS)
    # hits at ranks 2 and 4; ideal: 3 hits at ranks 1..3
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(hits, TARGETS, 4)[0] == pytest.approx(dcg / idcg)
    # K=2: one hit at rank 2, ideal min(3, 2) = 2 hits
    assert ndcg_at_k(hits, TARGETS, 2)[0] == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    )
    perfect = hit_matrix(np.array([[9, 2, 4]]), TARGETS)
    assert ndcg_at_k(perfect, TARGETS, 3)[0] == pytest.approx(1.0)


def test_map_at_k() -> None:
    hits = hit_matrix(RECS, TARGETS)
    # P@2 = 1/2, P@4 = 2/4; divided by min(|rel|=3, K=4) = 3
    assert average_precision_at_k(hits, TARGETS, 4)[0] == pytest.approx((0.5 + 0.5) / 3)
    # K=2: P@2 = 1/2 over min(3, 2) = 2
    assert average_precision_at_k(hits, TARGETS, 2)[0] == pytest.approx(0.25)


def test_users_without_targets_score_zero_and_accuracy_averages_users() -> None:
    recs = np.array([[1, 2], [3, 4]])
    targets = [np.array([1]), np.array([], dtype=np.int64)]
    hits = hit_matrix(recs, targets)
    assert recall_at_k(hits, targets, 2).tolist() == [1.0, 0.0]
    assert ndcg_at_k(hits, targets, 2).tolist() == [1.0, 0.0]
    assert accuracy(hits, targets, 2)["hitrate@2"] == pytest.approx(0.5)


def test_coverage_and_impressions() -> None:
    recs = np.array([[0, 1], [1, 2], [-1, -1]])
    assert impressions(recs, 5).tolist() == [1, 2, 1, 0, 0]
    assert catalogue_coverage(recs, 10) == pytest.approx(0.3)


def test_novelty_is_mean_self_information() -> None:
    # p = 4/4, 2/4, 1/4 and an item nobody saw: 1/(4+1)
    recs = np.array([[0, 1], [2, 3]])
    expected = (0 + 1 + 2 + math.log2(5)) / 4
    assert novelty(recs, np.array([4, 2, 1, 0]), 4) == pytest.approx(expected)


def test_gini() -> None:
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    # sorted x = [0,0,0,10]: Σ(2i−n−1)x = 3·10 = 30, / (n·Σx = 40)
    assert gini(np.array([10, 0, 0, 0])) == pytest.approx(0.75)
    # [1,2,3,4]: (−3·1 −1·2 +1·3 +3·4) / (4·10) = 10/40
    assert gini(np.array([4, 3, 2, 1])) == pytest.approx(0.25)
    assert gini(np.zeros(3)) == 0.0


def test_top_k_excludes_breaks_ties_by_index_and_pads() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [0.4, 0.3, 0.2, 0.1]])
    assert top_k(scores, 3, [[1], []]).tolist() == [[3, 2, 0], [0, 1, 2]]
    assert top_k(scores, 5, [[1], [0, 1, 2]]).tolist() == [[3, 2, 0, -1, -1], [3, -1, -1, -1, -1]]
