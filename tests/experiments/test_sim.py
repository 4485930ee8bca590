"""The marketplace simulator: eligibility, capacity, common random numbers, no interference
where there should be none, and ranking through the real reranker (no servers needed)."""

from __future__ import annotations

import numpy as np
import pytest

from opendisco.experiments import sim
from opendisco.experiments._merge import merge_ranks
from opendisco.experiments.sim._market import DECLINED, RECIPROCATED
from opendisco.experiments.sim._ranking import merged
from opendisco.rerank import merged_config

SMALL = sim.PopulationConfig(markets=3, market_size=80)
BOOST = sim.Ranker(merged_config({"weights": {"popularity": 1.5}}), name="boost")


@pytest.fixture(scope="module")
def pop() -> sim.Population:
    return sim.generate_population(SMALL, seed=3)


@pytest.fixture(scope="module")
def world(pop: sim.Population) -> sim.World:
    return sim.World(pop, sim.REGIMES["balanced"], sim.Ranker(name="control"), seed=3)


def _admits(pop: sim.Population, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (
        pop.admits_gender[a, pop.gender[b]]
        & (pop.age_lo[a] <= pop.age[b])
        & (pop.age[b] <= pop.age_hi[a])
    )


def test_population_is_seeded_and_pairs_are_two_sided_eligible(pop: sim.Population) -> None:
    again = sim.generate_population(SMALL, seed=3)
    assert np.array_equal(pop.pair_candidate, again.pair_candidate)
    assert np.array_equal(pop.p_like, again.p_like)
    other = sim.generate_population(SMALL, seed=4)
    assert not np.array_equal(pop.attractiveness, other.attractiveness)
    v, c = pop.pair_viewer, pop.pair_candidate
    assert (v != c).all()
    assert (pop.market[v] == pop.market[c]).all()
    assert _admits(pop, v, c).all() and _admits(pop, c, v).all()
    # every eligible pair of a market is present (nothing eligible is missing)
    m = pop.market == 0
    idx = np.flatnonzero(m)
    both = _admits(pop, idx[:, None], idx[None, :]) & _admits(pop, idx[None, :], idx[:, None])
    np.fill_diagonal(both, False)
    assert both.sum() == int(m[v].sum())
    assert (pop.pair_viewer[pop.reverse] == c).all() and (
        pop.pair_candidate[pop.reverse] == v
    ).all()


def test_impressions_are_eligible_unseen_and_within_attention(world: sim.World) -> None:
    pop = world.pop
    out = world.run(BOOST, sim.Assignment.nobody(pop.n), seed=1)
    shown = np.concatenate([world.pre.imp_pair, out.imp_pair])
    assert np.unique(shown).shape[0] == shown.shape[0]  # a pair is shown once, ever
    v = pop.pair_viewer[out.imp_pair]
    per_day = np.bincount(out.imp_day * pop.n + v)
    assert per_day.max() <= world.market.slots  # finite attention
    active = out.active[out.imp_day - out.first_day, v]
    assert active.all()  # only members who opened the app see anyone


def test_reviews_never_exceed_capacity(world: sim.World) -> None:
    pop = world.pop
    out = world.run(BOOST, sim.Assignment.everyone(pop.n), seed=2)
    reviewed = ((out.prop_status == RECIPROCATED) & ~out.prop_instant) | (
        out.prop_status == DECLINED
    )
    receiver = pop.pair_candidate[out.imp_pair[out.prop_imp[reviewed]]]
    day = out.prop_resolved[reviewed]
    counts = np.bincount(day * pop.n + receiver, minlength=(day.max() + 1) * pop.n)
    cap = np.ceil(world.market.capacity * pop.capacity_scale)
    assert (counts.reshape(-1, pop.n) <= cap[None, :]).all()
    assert (out.prop_status == 3).any()  # the balanced market does turn likes away


def test_same_seed_same_world_and_common_random_numbers(world: sim.World) -> None:
    pop = world.pop
    a = world.run(BOOST, sim.Assignment.everyone(pop.n), seed=5)
    b = world.run(BOOST, sim.Assignment.everyone(pop.n), seed=5)
    assert np.array_equal(a.imp_pair, b.imp_pair) and np.array_equal(a.imp_mutual, b.imp_mutual)
    c = world.run(BOOST, sim.Assignment.nobody(pop.n), seed=5)
    assert np.array_equal(a.active, c.active)  # the worlds share their draws
    assert not np.array_equal(np.sort(a.imp_pair), np.sort(c.imp_pair))  # the boost ranks
    d = world.run(BOOST, sim.Assignment.everyone(pop.n), seed=6)
    assert not np.array_equal(a.active, d.active)


def _by_pair(out: sim.Outcomes) -> dict[tuple[int, int], tuple[bool, bool]]:
    return {
        (int(p), int(d)): (bool(liked), bool(m))
        for p, d, liked, m in zip(
            out.imp_pair, out.imp_day, out.imp_liked, out.imp_mutual, strict=True
        )
    }


@pytest.mark.parametrize("pair_level", [False, True])
def test_no_interference_control_satisfies_sutva(pop: sim.Population, pair_level: bool) -> None:
    """Without slots, capacity and instant matches every impression's outcome is the one of
    the world where everybody shares its pair's treatment: no design can be biased there."""
    w = sim.World(pop, sim.REGIMES["no_interference"], sim.Ranker(name="control"), seed=3)
    rng = np.random.default_rng(0)
    viewer = rng.random(pop.n) < 0.5
    cand = rng.random(pop.n) < 0.5 if pair_level else None
    mixed = w.run(BOOST, sim.Assignment(viewer, cand), seed=9)
    treated = _by_pair(w.run(BOOST, sim.Assignment.everyone(pop.n), seed=9))
    control = _by_pair(w.run(BOOST, sim.Assignment.nobody(pop.n), seed=9))
    assert 0 < mixed.imp_treated.sum() < mixed.impressions
    got = _by_pair(mixed)
    for (p, d), t in zip(
        zip(mixed.imp_pair, mixed.imp_day, strict=True), mixed.imp_treated, strict=True
    ):
        ref = treated if t else control
        assert ref[(int(p), int(d))] == got[(int(p), int(d))]
    # and nothing the other world showed for that pair is missing
    for ref, flag in ((treated, True), (control, False)):
        keys = {k for k in ref if _pair_treated(pop, viewer, cand, k[0]) == flag}
        assert keys <= set(got)


def _pair_treated(pop: sim.Population, viewer: np.ndarray, cand: np.ndarray | None, p: int) -> bool:
    t = bool(viewer[pop.pair_viewer[p]])
    return t and (cand is None or bool(cand[pop.pair_candidate[p]]))


def test_pair_scores_are_the_rerankers_order(world: sim.World) -> None:
    pop = world.pop
    scores = world.scores(BOOST)
    for v in (0, 7, 42):
        lo, hi = int(pop.ptr[v]), int(pop.ptr[v + 1])
        res = sim.serve(pop, world.observed, v, pop.pair_candidate[lo:hi], BOOST, k=hi - lo)
        assert [s.name for s in res.trace.steps] == list(BOOST.config.steps)
        got = scores.order[scores.ptr[v] : scores.ptr[v + 1]]
        assert np.array_equal(got, lo + res.order)
    ctl = world.scores(world.control)
    assert not np.array_equal(ctl.order, scores.order)  # the boost is a real ranking change


def test_merged_order_matches_one_request_at_a_time(world: sim.World) -> None:
    """The bench's vectorised pair-level lists equal the per-request rank merge of the real
    reranker's two rankings."""
    pop = world.pop
    mask_c = np.random.default_rng(1).random(pop.n) < 0.5
    mask = mask_c[pop.pair_candidate]
    order, ptr = sim.merged_order(pop, world.scores(world.control), world.scores(BOOST), mask, 3)
    short, sptr = sim.merged_order(
        pop, world.scores(world.control), world.scores(BOOST), mask, 3, depth=10
    )
    for v in (1, 8, 50, 120):
        lo, hi = int(pop.ptr[v]), int(pop.ptr[v + 1])
        cands = pop.pair_candidate[lo:hi]
        rows = merged(
            pop, world.observed, v, cands, world.control, BOOST, mask_c[cands], hi - lo, 3
        )
        assert np.array_equal(order[ptr[v] : ptr[v + 1]], lo + rows)
        # cut at depth 10 the list is exact for its first positions
        assert np.array_equal(short[sptr[v] : sptr[v] + 6], order[ptr[v] : ptr[v] + 6])


def test_two_sided_treats_only_treated_viewer_by_treated_candidate_pairs(world: sim.World) -> None:
    """In the binding-capacity market the two-sided design's serving path changes only the
    pairs of a treated viewer and a treated candidate: every impression's treatment flag is
    that product, and control viewers are shown exactly what the all-control world shows
    them (same pairs, same days: only outcomes can differ, through the shared capacity)."""
    pop = world.pop
    rng = np.random.default_rng(5)
    viewer, cand = rng.random(pop.n) < 0.5, rng.random(pop.n) < 0.5
    mixed = world.run(BOOST, sim.Assignment(viewer, cand), seed=4)
    control = world.run(BOOST, sim.Assignment.nobody(pop.n), seed=4)
    v, c = pop.pair_viewer[mixed.imp_pair], pop.pair_candidate[mixed.imp_pair]
    assert np.array_equal(mixed.imp_treated, viewer[v] & cand[c])
    assert 0 < mixed.imp_treated.sum() < mixed.impressions

    def shown(out: sim.Outcomes, who: np.ndarray) -> set[tuple[int, int]]:
        keep = who[pop.pair_viewer[out.imp_pair]]
        return set(zip(out.imp_pair[keep].tolist(), out.imp_day[keep].tolist(), strict=True))

    assert shown(mixed, ~viewer) == shown(control, ~viewer)
    # treated viewers' lists do change (the treatment is real)
    assert shown(mixed, viewer) != shown(control, viewer)


def test_merge_ranks_places_each_candidate_by_its_own_arm() -> None:
    control = np.array([0, 1, 2, 3])
    treated = np.array([3, 2, 1, 0])
    mask = np.array([False, False, True, True])
    tie = np.array([0.1, 0.9, 0.5, 0.2])
    # ranks: row0 0 (control), row1 1 (control), row2 1 (treated), row3 0 (treated)
    assert merge_ranks(control, treated, mask, tie).tolist() == [0, 3, 2, 1]
    assert merge_ranks(control, treated, np.zeros(4, bool), tie).tolist() == [0, 1, 2, 3]
    assert merge_ranks(control, np.array([3, 2]), mask, tie).tolist() == [0, 3, 2, 1]
    assert merge_ranks(control, np.array([3]), mask, tie).tolist() == [0, 3, 1]  # row 2 dropped


def test_dynamic_runs_serve_every_session_with_live_features(pop: sim.Population) -> None:
    market = sim.REGIMES["balanced"].model_copy(update={"days": 3, "warmup_days": 2})
    w = sim.World(pop, market, sim.Ranker(name="control"), seed=1)
    seen: list[float] = []
    out = w.run(
        BOOST,
        sim.Assignment(np.arange(pop.n) % 2 == 0, np.arange(pop.n) % 3 == 0),
        seed=4,
        dynamic=True,
        before_day=lambda day, obs: seen.append(float(obs.exposure.sum())),
    )
    assert out.impressions > 0 and out.imp_treated.any() and (~out.imp_treated).any()
    assert seen[0] < seen[-1]  # today's impressions enter tomorrow's exposure feature
    v = pop.pair_viewer[out.imp_pair]
    assert np.bincount(out.imp_day * pop.n + v).max() <= market.slots


def test_regimes_run_from_demand_to_supply_constrained(pop: sim.Population) -> None:
    expired = []
    for name in ("demand_constrained", "balanced", "supply_constrained"):
        w = sim.World(pop, sim.REGIMES[name], sim.Ranker(name="control"), seed=2)
        out = w.run(BOOST, sim.Assignment.nobody(pop.n), seed=2)
        expired.append(float((out.prop_status == 3).mean()))
    assert expired[0] < expired[1] < expired[2]


def test_metrics() -> None:
    assert sim.gini(np.ones(10)) == pytest.approx(0.0)
    assert sim.gini(np.array([0.0, 0.0, 1.0])) == pytest.approx(2 / 3)
    assert sim.top_share(np.arange(100.0), 0.01) == pytest.approx(99 / 4950)
    assert sim.top_share(np.zeros(5)) == 0.0


def test_summary_reports_the_health_metrics(world: sim.World) -> None:
    pop = world.pop
    out = world.run(BOOST, sim.Assignment.nobody(pop.n), seed=3)
    s = sim.summary(out, pop)
    assert s["impressions"] == out.impressions > 0
    assert 0 < s["mutual_likes"] <= s["likes"] <= s["impressions"]
    assert s["mutual_likes_per_1000"] == pytest.approx(1000 * s["mutual_likes"] / s["impressions"])
    assert 0 < s["match_share_per_week"] <= 1
    assert s["replies"] <= s["messages"] <= s["matches"]
    assert 0 < s["inbound_gini"] < 1 and 0 < s["inbound_top1_share"] < 1
