"""The ranking features a learned ranker gets beyond the linear model's (pure, no services):
the member's taste profile and the candidates' affinity to it, graph/popularity/recency
columns, and the linear score itself as a column."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from opendisco.rerank import (
    FEATURE_NAMES,
    PROFILE_COLUMNS,
    CandidateBatch,
    Features,
    LinearScorer,
    MemberProfile,
    RerankConfig,
    RerankContext,
    Reranker,
    assemble_features,
    profile_features,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _doc(cat: str | None, tags: list[str], days: float, pop: float) -> dict:
    return {
        "category": cat,
        "tags": tags,
        "created_at": NOW - timedelta(days=days),
        "popularity": pop,
    }


def test_profile_shares_ages_and_popularity_of_recent_positives() -> None:
    docs = [
        _doc("Drama", ["Drama", "War"], 100, 9),
        _doc("Drama", ["Drama", "Drama"], 10, 0),  # a repeated tag counts once per item
        _doc("Comedy", ["Comedy"], 1000, 99),
        _doc(None, [], 0, 0),
    ]
    p = MemberProfile.from_items(docs, NOW)
    assert p.items == 4
    assert p.categories == {"Drama": 0.5, "Comedy": 0.25}
    assert p.tags == {"Drama": 0.5, "War": 0.25, "Comedy": 0.25}
    assert p.log_age == pytest.approx(np.mean(np.log1p([100, 10, 1000, 0])))
    assert p.log_age_newest == 0.0
    assert p.log_popularity == pytest.approx(np.mean(np.log1p([9, 0, 99, 0])))
    assert MemberProfile.from_items([], NOW) == MemberProfile()


def test_candidates_affinity_to_the_profile() -> None:
    p = MemberProfile.from_items(
        [_doc("Drama", ["Drama", "War"], 100, 9), _doc("Comedy", ["Comedy"], 100, 9)], NOW
    )
    items = [
        {"id": "a", "category": "Drama", "tags": ["Drama", "Horror"], "popularity": 9,
         "created_at": NOW - timedelta(days=100)},
        {"id": "b", "category": "Horror", "tags": ["Horror"], "popularity": 0,
         "created_at": NOW - timedelta(days=1)},
        {"id": "c", "category": None, "tags": [], "popularity": 99},  # no date: age gap 0
    ]  # fmt: skip
    batch = CandidateBatch.from_items(items, now=NOW)
    cols = profile_features(batch, p)
    assert sorted(cols) == sorted(PROFILE_COLUMNS)
    np.testing.assert_allclose(cols["category_affinity"], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(cols["tag_affinity"], [(0.5 + 0.0) / 2, 0.0, 0.0])
    np.testing.assert_allclose(cols["age_gap"], [0.0, np.log1p(1) - np.log1p(100), 0.0])
    np.testing.assert_allclose(cols["newest_gap"], cols["age_gap"])  # both 100 days old
    np.testing.assert_allclose(
        cols["pop_gap"], [0.0, -np.log1p(9), np.log1p(99) - np.log1p(9)], atol=1e-12
    )
    # no recent positives: zeros, never NaN (the linear scorer multiplies every column)
    empty = profile_features(batch, MemberProfile())
    assert all(np.array_equal(v, np.zeros(3)) for v in empty.values())


def test_new_columns_and_the_linear_score_column() -> None:
    items = [
        {"id": f"i{i}", "category": f"c{i % 2}", "popularity": float(p), "quality": 0.5,
         "created_at": NOW - timedelta(days=d)}
        for i, (p, d) in enumerate([(0, 1), (3, 10), (8, 1000), (15, 5)])
    ]  # fmt: skip
    batch = CandidateBatch.from_items(items, fused=np.array([1.0, 0.8, 0.6, 0.4]), now=NOW)
    graph = np.array([0.0, 4.0, 4.0, 1.0])
    aff = {name: np.full(4, 0.25) for name in PROFILE_COLUMNS}
    feats = Features(np.eye(4), np.zeros((4, 2)), np.zeros(4), np.zeros(4), graph, affinity=aff)
    cfg = RerankConfig()
    X = assemble_features(batch, feats, RerankContext(user_vector=np.ones(4)), cfg)
    col = FEATURE_NAMES.index
    np.testing.assert_allclose(
        X[:, col("graph_norm")], np.log1p(graph / np.sqrt(1 + np.array([0, 3, 8, 15])))
    )
    np.testing.assert_allclose(X[:, col("log_age")], np.log1p([1, 10, 1000, 5]))
    for name in PROFILE_COLUMNS:
        np.testing.assert_allclose(X[:, col(name)], 0.25)
    # the "linear" column is the linear model's score: a learned ranker can reproduce it
    np.testing.assert_allclose(X[:, col("linear")], LinearScorer(cfg).score(X))
    assert np.isfinite(X).all()
    res = Reranker(RerankConfig(steps=("score",))).run(batch, feats, RerankContext())
    assert res.ids == [
        batch.ids[i] for i in np.argsort(-res.trace.X[:, col("linear")], kind="stable")
    ]
    with pytest.raises(ValidationError):  # its own score cannot weigh into itself
        RerankConfig(weights={"linear": 1.0})
