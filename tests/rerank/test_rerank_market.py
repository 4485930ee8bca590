"""Two-sided market math (pure): the reciprocal estimate and step, pacing, the controller, live
trending counts; and that all of it is neutral for a one-sided catalogue."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from opendisco.rerank import (
    FEATURE_NAMES,
    PERCENTILE_COLUMNS,
    CandidateBatch,
    Features,
    RerankConfig,
    RerankContext,
    Reranker,
    below_cut,
    bucket_level,
    member_budgets,
    merged_config,
    pacing_boost,
    pacing_penalty,
    reciprocal_estimate,
    reply_chance,
    segment_prior,
)
from opendisco.signals import (
    PacingState,
    PacingTargets,
    attention_stats,
    decayed,
    pacing_step,
    rate_per_day,
    trend_increments,
)

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _members(n: int, *, fused: list[float] | None = None, member: bool = True) -> CandidateBatch:
    items = [
        {"id": f"p{i}", "kind": "profile" if member else "movie", "owner_id": f"m{i}"}
        for i in range(n)
    ]
    return CandidateBatch.from_items(items, fused=fused or list(np.linspace(1.0, 0.5, n)))


def _features(n: int, dim: int = 4, **kw: Any) -> Features:
    base = Features.empty(n, dim, 2)
    return Features(**{**base.__dict__, **kw})


def test_new_features_are_appended_to_the_schema() -> None:
    # learning to rank reads this schema (model files and served lists record it): the
    # two-sided columns come after the one-sided and learning-to-rank ones
    assert FEATURE_NAMES[:10] == (
        "fused",
        "content_sim",
        "behaviour_sim",
        "graph",
        "quality",
        "popularity",
        "freshness",
        "exposure",
        "inbound",
        "n_sources",
    )
    two_sided = ("reciprocal", "liked_viewer", "mutual", "trending")
    at = FEATURE_NAMES.index("reciprocal")
    assert FEATURE_NAMES[at : at + 4] == two_sided
    # then the trained item-item columns (flat, by recency) and the per-list percentiles
    assert FEATURE_NAMES[at + 4 :] == (
        "item_sim",
        "item_sim_recent",
        *(f"pct_{c}" for c in PERCENTILE_COLUMNS),
    )
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    # the default linear model gives the two-sided and the appended columns no weight (the
    # reciprocal step combines the directions; the columns feed the learned scorer)
    w = dict(zip(FEATURE_NAMES, RerankConfig().weight_vector(), strict=True))
    assert all(w[n] == 0.0 for n in FEATURE_NAMES[at:])


def test_reciprocal_estimate_prior_history_and_known_likes() -> None:
    cfg = RerankConfig(reply_capacity=None)  # the window reply ratio (the live rate: below)
    n = 4
    profile = np.array([1.0, 0.0, 0.0, 0.0])
    taste = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 0, 0]])
    feats = _features(
        n,
        taste=taste,
        likes_sent=np.array([200.0, 200.0, 2.0, 0.0]),
        passes_sent=np.array([200.0, 200.0, 2.0, 0.0]),
        liked_viewer=np.array([0.0, 0.0, 0.0, 0.0]),
    )
    ctx = RerankContext(viewer_profile=profile)
    b = reciprocal_estimate(feats, ctx, cfg, n)
    # no history: the segment's prior (empirical Bayes: the pool's pooled like rate, 0.5 here,
    # shrunk toward the configured prior); a long history that likes the viewer's kind: well
    # above; the opposite taste: well below; little history: close to the pool's rate
    pooled = segment_prior(feats.likes_sent, feats.passes_sent, cfg.reciprocal_prior, 10.0)
    assert pooled == pytest.approx((402 + 10 * cfg.reciprocal_prior) / (804 + 10))
    assert b[3] == pytest.approx(pooled)
    assert b[0] > 0.6 > b[2] > 0.4 > b[1]
    # a pool where nobody has history: the configured prior
    liked = reciprocal_estimate(
        _features(n, liked_viewer=np.array([0.0, 1.0, 0.0, 0.0])), ctx, cfg, n
    )
    assert liked[1] == 1.0 and liked[0] == pytest.approx(cfg.reciprocal_prior)
    # a picky pool moves a newcomer's prior down, a liberal one up
    picky = segment_prior(np.full(3, 10.0), np.full(3, 90.0), cfg.reciprocal_prior, 10.0)
    keen = segment_prior(np.full(3, 90.0), np.full(3, 10.0), cfg.reciprocal_prior, 10.0)
    assert picky < 0.15 < cfg.reciprocal_prior < 0.8 < keen
    # a recipient far over its reply capacity rarely gets to the like
    busy = _features(n, inbound=np.array([0.0, 0.0, 0.0, 10 * cfg.inbound_capacity]))
    assert reciprocal_estimate(busy, ctx, cfg, n)[3] < 0.15 * cfg.reciprocal_prior


def test_reply_chance_is_the_share_of_a_poisson_load_a_recipient_answers() -> None:
    # E[min(1, capacity / (N + 1))], N ~ Poisson(load): checked against a direct sum and a
    # seeded simulation of the queue (likes answered in random order up to the capacity)
    loads = np.array([0.0, 0.5, 2.0, 6.0, 40.0])
    got = reply_chance(loads, 2.0)
    rng = np.random.default_rng(7)
    for lam, p in zip(loads, got, strict=True):
        N = rng.poisson(lam, 200_000)
        assert p == pytest.approx(float(np.minimum(1.0, 2.0 / (N + 1)).mean()), abs=0.005)
    assert got[0] == 1.0  # nobody else: the like is answered
    assert np.all(np.diff(got) < 0)  # more competing likes, less chance
    # far above the capacity: about capacity / load
    assert reply_chance(np.array([400.0]), 2.0)[0] == pytest.approx(2.0 / 401, rel=0.02)
    # more capacity never lowers the chance; none answers nothing
    assert np.all(reply_chance(loads, 4.0) >= got)
    assert not reply_chance(loads, 0.0).any()
    # a decayed count of a steady rate stands for that rate (r · h / ln 2 held)
    h = 24.0
    assert rate_per_day(5.0 * (h / 24.0) / np.log(2.0), h) == pytest.approx(5.0)


def test_congestion_aware_reciprocal_estimate_reads_the_live_like_rate() -> None:
    n = 3
    ctx = RerankContext()
    # equal histories; p1 receives 20 likes a day, p2 already liked the viewer (no review
    # needed: no capacity either), p0 receives none
    feats = _features(
        n,
        likes_sent=np.full(n, 5.0),
        passes_sent=np.full(n, 5.0),
        liked_viewer=np.array([0.0, 0.0, 1.0]),
        like_rate=np.array([0.0, 20.0, 20.0]),
        inbound=np.zeros(n),
    )
    window = reciprocal_estimate(feats, ctx, RerankConfig(reply_capacity=None), n)
    assert window[0] == pytest.approx(window[1])  # the window ratio does not see the rate
    cfg = RerankConfig(reply_capacity=2.0)
    b = reciprocal_estimate(feats, ctx, cfg, n)
    assert b[0] == pytest.approx(window[0])  # idle: the whole like rate
    assert b[1] == pytest.approx(window[1] * reply_chance(np.array([20.0]), 2.0)[0])
    assert b[1] < 0.15 * b[0] and b[2] == 1.0


def test_reciprocal_step_trades_one_sided_appeal_for_reciprocity() -> None:
    n = 4
    batch = _members(n, fused=[1.0, 0.95, 0.9, 0.3])
    # p0: best forward, will not like back (300 passes); p2: already liked the viewer; p1, p3:
    # no history (the prior)
    feats = _features(
        n,
        likes_sent=np.zeros(n),
        passes_sent=np.array([300.0, 0.0, 0.0, 0.0]),
        liked_viewer=np.array([0.0, 0.0, 1.0, 0.0]),
    )
    cfg = RerankConfig(steps=("score", "reciprocal"), weights={"fused": 1.0})
    res = Reranker(cfg).run(batch, feats, RerankContext())
    assert res.ids == ["p2", "p1", "p3", "p0"]
    change = res.trace.changes("reciprocal")
    assert (change["p2"]["from"], change["p2"]["to"]) == (2, 0)
    assert (change["p0"]["from"], change["p0"]["to"]) == (0, 3)
    assert res.trace.X[2, COL["reciprocal"]] == 1.0 and res.trace.X[2, COL["liked_viewer"]] == 1
    # weight 0: the forward order; the weighted geometric mean agrees on this clear case
    off = RerankConfig(**{**cfg.get_config(), "reciprocal_weight": 0.0})
    assert Reranker(off).run(batch, feats, RerankContext()).ids == ["p0", "p1", "p2", "p3"]
    prod = RerankConfig(**{**cfg.get_config(), "reciprocal_mode": "product"})
    assert Reranker(prod).run(batch, feats, RerankContext()).ids[0] == "p2"
    # taste against the viewer's profile: of two otherwise equal candidates, the one whose
    # likes resemble the viewer's profile goes first
    profile = np.array([0.0, 1.0, 0.0, 0.0])
    taste = np.array([[0.0, -1.0, 0, 0], [0.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, -1.0, 0]])
    even = _members(n, fused=[1.0, 1.0, 0.3, 0.3])
    tf = _features(n, taste=taste, likes_sent=np.full(n, 50.0), passes_sent=np.full(n, 50.0))
    got = Reranker(cfg).run(even, tf, RerankContext(viewer_profile=profile)).ids
    assert got[0] == "p1"


def test_without_a_viewer_the_reciprocal_terms_do_not_act() -> None:
    """Anonymous requests (no member asks): P(candidate likes the viewer) and its congestion
    term are factors of a match with the viewer, so they do not act — the column is 0 and the
    step keeps the order; pacing, which spreads exposure, still acts on the same list."""
    n = 4
    batch = _members(n, fused=[1.0, 0.95, 0.9, 0.3])
    # p0: one like received just now (congested at a capacity of 1 a day), p1: picky
    feats = _features(
        n,
        likes_sent=np.array([0.0, 0.0, 0.0, 0.0]),
        passes_sent=np.array([0.0, 300.0, 0.0, 0.0]),
        like_rate=np.array([24.0, 0.0, 0.0, 0.0]),
        paced_exposure=np.array([0.0, 0.0, 50.0, 0.0]),
    )
    cfg = merged_config({"steps": ("score", "reciprocal"), "weights": {"fused": 1.0}})
    assert cfg.reply_capacity is not None  # the serving default: congestion-aware
    member = Reranker(cfg).run(batch, feats, RerankContext(), timed=True)
    assert member.ids[:2] == ["p2", "p3"]  # with a viewer both terms demote p0 and p1
    anon = Reranker(cfg).run(batch, feats, RerankContext(anonymous=True), timed=True)
    assert anon.ids == ["p0", "p1", "p2", "p3"] and anon.trace.changes("reciprocal") == {}
    assert not anon.trace.X[:, COL["reciprocal"]].any()
    assert member.trace.X[:, COL["reciprocal"]].all()
    off = merged_config({**cfg.get_config(), "reciprocal_mode": "off"})
    assert np.array_equal(
        Reranker(off).run(batch, feats, RerankContext(anonymous=True)).scores, anon.scores
    )
    # pacing acts on an anonymous list all the same (every list shown spends exposure)
    paced = merged_config({"steps": ("score", "reciprocal", "pacing"), "pacing_cut": 1.0})
    ctx = RerankContext(anonymous=True, pacing_budget=1.0, k=2)
    res = Reranker(paced).run(batch, feats, ctx, timed=True)
    assert "p2" not in res.ids[:2] and res.trace.changes("pacing")


def test_market_steps_are_neutral_for_a_one_sided_catalogue() -> None:
    # movies: no member rows, so the reciprocal and pacing steps change nothing at all
    n = 6
    batch = _members(n, member=False)
    assert batch.member is None
    feats = _features(
        n,
        exposure=np.full(n, 1e6),
        paced_exposure=np.full(n, 1e6),
        like_rate=np.linspace(0.0, 500.0, n),
    )
    ctx = RerankContext(pacing_budget=1.0, pacing_mean_inbound=5.0, pacing_attention_cap=1e-6)
    # the pacing cut, the first-impression boost, the attention cap and the congestion-aware
    # reply chance at their strongest: still nothing moves
    market = merged_config({"pacing_cut": 0.01, "pacing_boost": 5.0, "reply_capacity": 0.01})
    res = Reranker(market).run(batch, feats, ctx, timed=True)
    for step in ("reciprocal", "pacing"):
        assert res.trace.changes(step) == {}
    X = res.trace.X
    assert not X[:, [COL["reciprocal"], COL["liked_viewer"], COL["mutual"]]].any()
    plain = RerankConfig(
        steps=tuple(s for s in RerankConfig().steps if s not in ("reciprocal", "pacing"))
    )
    assert Reranker(plain).run(batch, feats, ctx).ids == res.ids
    # the exposure step's overload damp reads inbound_capacity only through the inbound
    # attention a *member* receives, which a catalogue's items never get (plan_effects counts
    # profiles only): whatever the capacity, the same order as the defaults
    assert not feats.inbound.any()
    for capacity in (1.0, 5.0, 20.0, 100.0):
        alt = merged_config({"inbound_capacity": capacity, "reciprocal_weight": 0.99})
        assert Reranker(alt).run(batch, feats, ctx).ids == Reranker().run(batch, feats, ctx).ids


def test_pacing_penalty_is_smooth_and_bounded() -> None:
    paced = np.array([0.0, 20.0, 30.0, 40.0, 400.0])
    pen = pacing_penalty(paced, 20.0, strength=0.5)
    assert pen[0] == pen[1] == 0.0  # within the budget per window
    assert 0 < pen[2] < pen[3] < pen[4] <= 0.5  # rising smoothly, bounded by strength
    # per-member budgets: a member with k times the mean inbound attention gets 1/k of it
    budgets = member_budgets(20.0, np.array([0.0, 5.0, 10.0, 40.0]), mean_inbound=10.0)
    assert budgets.tolist() == [20.0, 20.0, 20.0, 5.0]
    assert member_budgets(20.0, np.array([40.0]), None).tolist() == [20.0]
    # a budget below one impression per window still binds (the leaky bucket is fractional)
    assert pacing_penalty(np.array([1.0]), 0.2, 1.0)[0] > 0.4


def test_pacing_step_demotes_members_ahead_of_their_budget() -> None:
    n = 3
    batch = _members(n, fused=[1.0, 0.9, 0.8])
    # p0 was shown far more than its budget, p1 as much as p2 but it already receives four
    # times the mean inbound attention: its own budget is a quarter
    feats = _features(
        n,
        paced_exposure=np.array([500.0, 8.0, 8.0]),
        inbound=np.array([1.0, 40.0, 1.0]),
    )
    cfg = RerankConfig(steps=("score", "pacing"), weights={"fused": 1.0}, pacing_strength=0.5)
    off = Reranker(cfg).run(batch, feats, RerankContext(pacing_budget=None))
    assert off.ids == ["p0", "p1", "p2"]
    ctx = RerankContext(pacing_budget=10.0, pacing_mean_inbound=10.0)
    on = Reranker(cfg).run(batch, feats, ctx)
    assert on.ids == ["p2", "p1", "p0"]
    change = on.trace.changes("pacing")
    assert change["p0"]["delta"] < -0.45 and change["p2"]["delta"] == 0.0
    assert -0.45 < change["p1"]["delta"] < 0


def test_bucket_level_paces_a_threshold_policy_to_its_rate() -> None:
    # a member shown whenever its leaky bucket (1-window time constant) is below the level is
    # shown at the budgeted rate, also for budgets under one impression per window
    for rate in (0.2, 0.5, 1.0, 3.0, 10.0):
        level = float(bucket_level(np.array([rate]))[0])
        bucket, t, shown, dt = 0.0, 0.0, 0, 1e-3
        while t < 200.0:
            if bucket <= level:
                bucket, shown = bucket + 1.0, shown + 1
            bucket *= np.exp(-dt)
            t += dt
        assert shown / 200.0 == pytest.approx(rate, rel=0.05), rate
    assert bucket_level(np.array([10.0]))[0] == pytest.approx(9.5, abs=0.01)


def test_below_cut_fills_the_page_within_budget_and_only_reorders() -> None:
    order = np.array([4, 0, 3, 1, 2, 5])
    excess = np.array([0.5, 3.0, 1.0, 0.2, 2.0, 0.0])  # rows 1 and 4 are over budget
    got = below_cut(order, excess, page=3)
    assert got.tolist() == [0, 3, 2, 4, 1, 5]  # the page, the over-budget rows, the rest
    # too few within budget: the least over complete the page, the most shown go last
    all_over = below_cut(order, np.array([2.0, 5.0, 3.0, 1.5, 4.0, 9.0]), page=2)
    assert all_over.tolist() == [3, 0, 2, 4, 1, 5]
    assert sorted(all_over.tolist()) == sorted(order.tolist())
    assert below_cut(order, np.zeros(6), page=3) is order


def test_pacing_cut_moves_over_budget_members_below_the_page_through_mmr() -> None:
    # the full default steps (mmr re-sorts the head by score): a member far over its budget is
    # not on the page while enough members within budget are eligible
    n = 8
    batch = _members(n, fused=list(np.linspace(1.0, 0.6, n)))
    feats = _features(n, paced_exposure=np.array([40.0] + [0.0] * (n - 1)))
    ctx = RerankContext(pacing_budget=4.0, pacing_mean_inbound=1.0, k=3)
    soft = Reranker(merged_config({"pacing_strength": 0.05})).run(batch, feats, ctx)
    assert "p0" in soft.top(3)  # a small smooth demotion keeps it on the page
    cut = merged_config({"pacing_strength": 0.05, "pacing_cut": 1.0})
    res = Reranker(cut).run(batch, feats, ctx)
    assert "p0" not in res.top(3) and sorted(res.ids) == sorted(batch.ids)
    assert res.trace.changes("pacing")["p0"]["to"] >= 3
    # everyone over budget: the page is still full, least over first
    tired = _features(n, paced_exposure=np.arange(n, 0, -1) * 10.0)
    full = Reranker(cut).run(batch, tired, ctx)
    assert sorted(full.top(3)) == ["p5", "p6", "p7"]


def test_first_impression_boost_lifts_members_without_attention() -> None:
    inbound = np.array([0.0, 1.0, 4.0, 20.0])
    paced = np.array([0.0, 0.0, 0.0, 0.0])
    boost = pacing_boost(paced, 2.0, inbound, mean_inbound=4.0, strength=0.3)
    assert boost[0] > boost[1] > 0.0 == boost[2] == boost[3]
    assert boost[0] <= 0.3
    # budget spent: no boost; no measurement: no boost
    assert pacing_boost(np.full(4, 2.0), 2.0, inbound, 4.0, 0.3).tolist() == [0.0] * 4
    assert not pacing_boost(paced, 2.0, inbound, None, 0.3).any()
    n = 3
    batch = _members(n, fused=[1.0, 0.95, 0.9])
    feats = _features(n, inbound=np.array([9.0, 9.0, 0.0]))
    cfg = RerankConfig(steps=("score", "pacing"), weights={"fused": 1.0}, pacing_boost=0.3)
    ctx = RerankContext(pacing_budget=5.0, pacing_mean_inbound=6.0)
    assert Reranker(cfg).run(batch, feats, ctx).ids[0] == "p2"


@pytest.mark.parametrize("seed", range(25))
def test_market_steps_never_surface_an_ineligible_candidate(seed: int) -> None:
    """Whatever the pacing, attention cap, boost and reciprocal settings and signals, the
    ranked list is
    exactly the rows the rules keep (unavailable, banned ids and banned categories dropped):
    the market steps reorder, never add."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    items = [
        {
            "id": f"p{i}",
            "kind": "profile" if rng.random() < 0.8 else "movie",
            "owner_id": f"m{i}",
            "category": str(rng.integers(0, 3)),
            "available": bool(rng.random() < 0.8),
        }
        for i in range(n)
    ]
    batch = CandidateBatch.from_items(items, fused=list(rng.random(n)))
    feats = _features(
        n,
        exposure=rng.exponential(5, n),
        paced_exposure=rng.exponential(5, n) * (rng.random(n) < 0.7),
        inbound=rng.exponential(5, n) * (rng.random(n) < 0.7),
        likes_sent=rng.integers(0, 50, n).astype(float),
        passes_sent=rng.integers(0, 50, n).astype(float),
        liked_viewer=(rng.random(n) < 0.2).astype(float),
    )
    bans = frozenset(f"p{i}" for i in range(n) if rng.random() < 0.2)
    cfg = merged_config(
        {
            "pacing_cut": float(rng.choice([0.5, 1.0, 2.0])),
            "pacing_boost": float(rng.choice([0.0, 0.3, 2.0])),
            "pacing_strength": float(rng.choice([0.0, 1.0, 5.0])),
            "reciprocal_mode": str(rng.choice(["harmonic", "product", "off"])),
            "banned_categories": ("1",) if rng.random() < 0.3 else (),
        }
    )
    ctx = RerankContext(
        bans=bans,
        pacing_budget=float(rng.choice([0.1, 1.0, 10.0])) if rng.random() < 0.8 else None,
        pacing_mean_inbound=float(rng.exponential(5)),
        pacing_attention_cap=float(rng.choice([0.01, 1.0, 5.0])) if rng.random() < 0.7 else None,
        k=int(rng.integers(1, 10)),
    )
    res = Reranker(cfg).run(batch, feats, ctx)
    allowed = {
        it["id"]
        for it in items
        if it["available"]
        and it["id"] not in bans
        and not (cfg.banned_categories and it["category"] == "1")
    }
    assert sorted(res.ids) == sorted(allowed)


def test_attention_stats() -> None:
    assert attention_stats([]) == (0.0, 0.0)
    assert attention_stats(np.zeros(10)) == (0.0, 0.0)
    share, gini = attention_stats(np.ones(200))
    assert share == pytest.approx(2 / 200) and gini == pytest.approx(0.0, abs=1e-12)
    x = np.zeros(100)
    x[7] = 5.0
    share, gini = attention_stats(x)
    assert share == 1.0 and gini == pytest.approx(0.99)


def _toy_market(budget_mult: float, appeal: np.ndarray, traffic: float) -> np.ndarray:
    """Inbound attention when impressions go by appeal but each member's share is capped at
    ``budget_mult`` × the mean (what the pacing step does, in the limit of a hard cap)."""
    share = appeal / appeal.sum() * traffic
    cap = budget_mult * traffic / appeal.shape[0]
    for _ in range(50):  # water-filling: what the capped members lose goes to the others
        over = share > cap
        excess = float((share[over] - cap).sum())
        share[over] = cap
        if excess < 1e-9:
            break
        room = ~over
        share[room] += excess * appeal[room] / appeal[room].sum()
    return share * 0.2  # likes per impression


def test_controller_steers_the_top_share_to_its_ceiling_and_relaxes() -> None:
    rng = np.random.default_rng(0)
    appeal = np.exp(1.5 * rng.normal(size=2000))
    targets = PacingTargets(top1_share=0.05, budget_min=0.5, budget_max=50.0, gain=0.5)
    state = PacingState(budget=targets.budget_max)
    free = attention_stats(_toy_market(1e9, appeal, 1e5))[0]
    assert free > 0.1  # unpaced, the top 1% gets far more than the ceiling
    for _ in range(40):
        counts = _toy_market(state.budget, appeal, 1e5)
        state = pacing_step(state, counts, 50.0, targets)
    assert attention_stats(_toy_market(state.budget, appeal, 1e5))[0] == pytest.approx(
        0.05, abs=0.005
    )
    assert state.impressions == pytest.approx(state.budget * 50.0)
    # a spread market: the budget goes back to its loosest (pacing then rarely binds)
    flat = PacingState(budget=2.0)
    for _ in range(20):
        flat = pacing_step(flat, np.ones(2000), 50.0, targets)
    assert flat.budget == targets.budget_max
    # a Gini ceiling works the same way
    g = PacingTargets(top1_share=None, gini=0.5, budget_min=0.5, budget_max=50.0)
    gs = PacingState(budget=g.budget_max)
    for _ in range(60):
        gs = pacing_step(gs, _toy_market(gs.budget, appeal, 1e5), 50.0, g)
    assert attention_stats(_toy_market(gs.budget, appeal, 1e5))[1] <= 0.52


def test_controller_integral_is_clamped_anti_windup() -> None:
    # held at its floor by a target out of reach for 50 steps, the controller loosens at the
    # first step the market is back within the target (no accumulated error to unwind)
    targets = PacingTargets(top1_share=0.02, budget_min=0.5, budget_max=8.0, gain=0.5)
    hot = np.r_[np.full(10, 100.0), np.ones(990)]
    state = PacingState(budget=targets.budget_max)
    for _ in range(50):
        state = pacing_step(state, hot, 1.0, targets)
    assert state.budget == targets.budget_min
    assert state.integral == pytest.approx(np.log(targets.budget_min))
    relaxed = pacing_step(state, np.ones(1000), 1.0, targets)
    assert relaxed.budget > targets.budget_min
    # a proportional term reacts to the current error on top of the integral
    pi = PacingTargets(top1_share=0.05, budget_min=0.5, budget_max=8.0, gain=0.5, kp=0.5)
    first = pacing_step(PacingState(budget=4.0), hot, 1.0, pi)
    plain = pacing_step(PacingState(budget=4.0), hot, 1.0, replace(pi, kp=0.0))
    assert first.integral == pytest.approx(plain.integral)
    assert first.budget == pytest.approx(plain.budget * np.exp(-0.5))
    # a state stored before the integral existed steps as before (integral = log budget)
    assert plain.budget == pytest.approx(4.0 * np.exp(-0.5))


def test_live_trend_counts_decay_from_each_event_time() -> None:
    hl = 3_600_000.0  # 1 h
    t0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
    incs = trend_increments(
        [("a", t0, 1.0), ("a", t0 - timedelta(hours=1), 1.0), ("b", t0, 2.0)], hl
    )
    ref = int(t0.timestamp() * 1000)
    assert incs == {"a": (ref, 1.5), "b": (ref, 2.0)}
    assert decayed(1.5, ref, ref + 3_600_000, hl, 72 * hl) == pytest.approx(0.75)
    assert decayed(1.5, ref, ref + 72 * 3_600_000, hl, 72 * hl) == 0.0  # outside the window
