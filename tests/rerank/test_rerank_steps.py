"""Unit tests of the reranker math (pure, no services)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from opendisco.rerank import (
    FEATURE_NAMES,
    MAX_KNOB,
    CandidateBatch,
    Features,
    RerankConfig,
    RerankContext,
    Reranker,
    apply_caps,
    apply_pins,
    exposure_adjustment,
    fatigue_penalty,
    mmr_select,
)


def _batch(n: int, ncat: int = 2, nown: int | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = [
        {
            "id": f"i{i}",
            "category": f"c{i % ncat}",
            "owner_id": f"o{i % (nown or n)}",
            "quality": 0.5,
        }
        for i in range(n)
    ]
    fused = np.linspace(1.0, 0.5, n)
    return CandidateBatch.from_items(items, fused=fused), rng


def test_config_round_trip_and_forbids_unknown() -> None:
    cfg = RerankConfig(mmr_lambda=0.5, weights={"fused": 2.0}, max_per_owner=None)
    again = RerankConfig.from_config(cfg.get_config())
    assert again == cfg
    with pytest.raises(ValidationError):
        RerankConfig.from_config({**cfg.get_config(), "nope": 1})
    with pytest.raises(ValidationError):
        RerankConfig(weights={"not_a_feature": 1.0})
    with pytest.raises(ValidationError):
        RerankConfig(steps=("score", "bogus"))


def test_every_number_of_a_config_is_bounded_so_scores_stay_finite() -> None:
    """A huge finite weight (an arm, a draft, a params file) overflowed every score to inf or
    NaN: the API answered ``"score": null`` in an arbitrary order. At the bound, with every
    weight and strength there, the scores are finite."""
    for bad in (
        {"weights": {"popularity": 1e308}},
        {"source_weights": {"likers": -1e7}},
        {"exposure_strength": 1e300},
    ):
        with pytest.raises(ValidationError, match="beyond"):
            RerankConfig.from_config(bad)
    cfg = RerankConfig(
        weights={n: MAX_KNOB for n in FEATURE_NAMES if n != "linear"},
        source_weights={"semantic": MAX_KNOB},
        exposure_strength=MAX_KNOB,
        fatigue_strength=MAX_KNOB,
        pacing_strength=MAX_KNOB,
    )
    b, rng = _batch(30)
    V = rng.normal(size=(30, 8))
    feats = Features(V, rng.normal(size=(30, 4)), rng.random(30) * 1e4, np.zeros(30), np.zeros(30))
    res = Reranker(cfg).run(b, feats, RerankContext(user_vector=V[0]))
    assert len(res.ids) == 30 and np.isfinite(res.scores).all()


def test_linear_score_is_weighted_sum_of_columns() -> None:
    b, rng = _batch(5)
    V = rng.normal(size=(5, 8))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    u = V[3] * 2.0  # not unit: assembly normalises
    f = Features(V, np.zeros((5, 4)), np.zeros(5), np.zeros(5), np.zeros(5))
    cfg = RerankConfig(weights={"content_sim": 1.0}, steps=("score",))
    res = Reranker(cfg).run(b, f, RerankContext(user_vector=u))
    assert res.ids[0] == "i3"
    col = FEATURE_NAMES.index("content_sim")
    np.testing.assert_allclose(res.trace.X[:, col], V @ V[3], atol=1e-12)
    np.testing.assert_allclose(res.scores, np.sort(V @ V[3])[::-1], atol=1e-12)


def test_mmr_prefers_dissimilar_second_pick() -> None:
    V = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    rel = np.array([1.0, 0.95, 0.9])
    assert mmr_select(rel, V, 3, lam=1.0).tolist() == [0, 1, 2]
    assert mmr_select(rel, V, 3, lam=0.5).tolist() == [0, 2, 1]


def test_caps_defer_overflow_and_fill_when_short() -> None:
    cat = np.array([0, 0, 0, 1, 1, 2])
    out = apply_caps(np.arange(6), [cat], [2], page=4)
    assert out.tolist() == [0, 1, 3, 4, 2, 5]
    # only one category: the page is completed from the deferred items, order kept
    out = apply_caps(np.arange(4), [np.zeros(4, dtype=np.int64)], [1], page=3)
    assert out.tolist() == [0, 1, 2, 3]
    # -1 (no category) is never capped
    out = apply_caps(np.arange(3), [np.full(3, -1)], [1], page=3)
    assert out.tolist() == [0, 1, 2]


def test_pins_and_bans() -> None:
    assert apply_pins(np.array([5, 4, 3, 2]), {2: 0, 9: 1}).tolist() == [2, 5, 4, 3]
    b, _ = _batch(6)
    f = Features.empty(6, 4, 4)
    ctx = RerankContext(bans=frozenset({"i0"}), pins={"i5": 1})
    res = Reranker(RerankConfig(mmr_lambda=1.0)).run(b, f, ctx)
    assert "i0" not in res.ids and res.ids[1] == "i5"
    assert res.trace.changes("rules")["i0"]["to"] is None
    assert res.trace.changes("pins")["i5"]["to"] == 1


def test_exposure_balancing_is_two_sided_and_bounded() -> None:
    exp = np.array([0.0, 10.0, 1000.0])
    adj = exposure_adjustment(
        exp, np.zeros(3), target=10.0, strength=0.3, capacity=5, inbound_strength=0.5
    )
    assert adj[0] > 0 and abs(adj[1]) < 1e-12 and adj[2] < 0
    assert np.all(np.abs(adj) <= 0.3)
    inbound = np.array([0.0, 5.0, 200.0])
    adj2 = exposure_adjustment(
        np.zeros(3), inbound, target=0.0, strength=0.3, capacity=5, inbound_strength=0.5
    )
    assert adj2[0] == 0 and adj2[1] == 0 and adj2[2] < -1.0


def test_fatigue_penalises_only_that_category() -> None:
    cat = np.array([0, 1, -1])
    pen = fatigue_penalty(cat, ["a", "b"], {"b": 3}, 0.4)
    np.testing.assert_allclose(pen, [0.0, 0.4 * np.log1p(3), 0.0])


def test_see_fewer_moves_category_down_in_pipeline() -> None:
    b, _ = _batch(10, ncat=2)
    f = Features.empty(10, 4, 4)
    cfg = RerankConfig(mmr_lambda=1.0, max_per_category=None, max_per_owner=None, page_size=4)
    plain = Reranker(cfg).run(b, f).top(4)
    tired = Reranker(cfg).run(b, f, RerankContext(fatigue={"c0": 5})).top(4)
    assert sum(i in {"i0", "i2", "i4", "i6", "i8"} for i in plain) == 2
    assert all(int(i[1:]) % 2 == 1 for i in tired)


def test_mmr_reduces_same_category_share() -> None:
    n = 60
    b, rng = _batch(n, ncat=3)
    # category 0 items are near-duplicates and rank highest by fused score
    base = np.eye(3, 16)  # orthogonal topics
    V = base[b.category] + 0.05 * rng.normal(size=(n, 16))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    fused = np.where(b.category == 0, 1.0, 0.8) + 0.01 * rng.random(n)
    b = CandidateBatch.from_items(b.items, fused=fused)
    f = Features(V, np.zeros((n, 4)), np.zeros(n), np.zeros(n), np.zeros(n))
    kw = {"max_per_category": None, "max_per_owner": None, "page_size": 10}
    relevance = Reranker(RerankConfig(mmr_lambda=1.0, **kw)).run(b, f).order[:10]
    diverse = Reranker(RerankConfig(mmr_lambda=0.3, **kw)).run(b, f).order[:10]
    share = lambda rows: float(np.mean(b.category[rows] == 0))  # noqa: E731
    assert share(relevance) == 1.0
    assert share(diverse) < share(relevance)
    assert set(b.category[diverse].tolist()) == {0, 1, 2}  # every topic on the page


def test_trace_names_every_step_and_keeps_inputs_unchanged() -> None:
    b, rng = _batch(30, ncat=3, nown=5)
    V = rng.normal(size=(30, 8))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    f = Features(V, np.zeros((30, 4)), rng.poisson(3, 30).astype(float), np.zeros(30), np.zeros(30))
    snapshot = V.copy()
    res = Reranker(RerankConfig(page_size=6)).run(b, f, RerankContext(user_vector=V[0]))
    assert [s.name for s in res.trace.steps] == list(RerankConfig().steps)
    np.testing.assert_array_equal(V, snapshot)
    d = res.trace.to_dict(res.top(6))
    assert {s["step"] for s in d["steps"]} == set(RerankConfig().steps)
    for item in [*res.top(6), "i0"]:
        expected = [
            {"step": st.name, **res.trace.changes(st.name)[item]}
            for st in res.trace.steps
            if item in res.trace.changes(st.name)
        ]
        assert res.trace.for_item(item) == expected
    owners = [b.owner[i] for i in res.order[:6]]
    assert max(owners.count(o) for o in set(owners)) <= 2
