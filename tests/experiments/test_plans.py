"""Designs pre-registered from the pre-period: the two-sided allocation and β from the
market balance (Johari et al. 2022), the switchback period from the market's measured
memory, the simulator's optional bounded seen memory, and the vectorised assignment the
bench uses being the served one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from opendisco.experiments import (
    Experiment,
    arm_index,
    candidate_arm,
    market_balance,
    sim,
    two_sided_plan,
    viewer_assignment,
)
from opendisco.experiments._assign import arm_indices, bucket, buckets, side_arms
from opendisco.experiments._readout import arm_shares
from opendisco.experiments._simulate import carry_over_days, pre_period_balance
from opendisco.experiments._twosided import _POISSON1_CDF, _poisson1

SMALL = sim.PopulationConfig(markets=3, market_size=120)
ARMS = [{"name": "control"}, {"name": "treatment", "rerank": {"weights": {"popularity": 1.0}}}]


@pytest.fixture(scope="module")
def pop() -> sim.Population:
    return sim.generate_population(SMALL, seed=5)


def _world(pop: sim.Population, regime: str, **market: object) -> sim.World:
    cfg = sim.REGIMES[regime].model_copy(update=market)
    return sim.World(pop, cfg, sim.Ranker(name="control"), seed=5)


# -- market balance and the two-sided plan ----------------------------------------------------
def test_market_balance_is_the_share_of_likes_to_capacity_bound_members() -> None:
    receiver = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    bound = np.array([0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)  # member 0 left one like
    assert market_balance(receiver, bound) == pytest.approx(3 / 8)
    assert market_balance(receiver, np.zeros(8, bool)) == 0.0
    assert market_balance(receiver, np.ones(8, bool)) == 1.0
    assert market_balance(np.zeros(0, np.int64), np.zeros(0, bool)) == 0.0


def test_plan_tends_to_the_unbiased_one_sided_design_at_either_end() -> None:
    """Demand-constrained (balance 0): every candidate treated as far as the cap allows,
    viewer contrast (β = 1); supply-constrained (1): the reverse; monotone in between."""
    demand, supply = two_sided_plan(0.0), two_sided_plan(1.0)
    assert (demand.viewer_share, demand.candidate_share, demand.beta) == (0.5, 0.9, 1.0)
    assert (supply.viewer_share, supply.candidate_share, supply.beta) == (0.9, 0.5, 0.0)
    plans = [two_sided_plan(b) for b in np.linspace(0, 1, 11)]
    assert all(a.viewer_share <= b.viewer_share for a, b in itertools.pairwise(plans))
    assert all(a.candidate_share >= b.candidate_share for a, b in itertools.pairwise(plans))
    assert all(a.beta >= b.beta for a, b in itertools.pairwise(plans))
    with pytest.raises(ValueError):
        two_sided_plan(1.5)
    with pytest.raises(ValueError):
        two_sided_plan(0.5, base=0.5, cap=1.0)  # a side with no control units


def test_pre_period_balance_orders_the_regimes(pop: sim.Population) -> None:
    """Measured on the pre-period only: 0 where nothing waits for capacity, and rising as the
    reply capacity tightens."""
    got = {r: pre_period_balance(_world(pop, r)) for r in sim.REGIMES}
    assert got["no_interference"] == 0.0
    assert got["demand_constrained"] < got["balanced"] < got["supply_constrained"]
    assert got["demand_constrained"] < 0.15 and got["supply_constrained"] > 0.6


def test_viewer_share_splits_two_sided_viewers_and_the_srm_expects_it() -> None:
    plan = two_sided_plan(0.75)
    exp = Experiment(id="p1", arms=ARMS, design=plan.design(), offset=0)
    ids = [f"m{i}" for i in range(20_000)]
    viewers = side_arms(exp, ids, "viewer")
    cands = side_arms(exp, ids, "candidate")
    assert abs(viewers.mean() - plan.viewer_share) < 0.01
    assert abs(cands.mean() - plan.candidate_share) < 0.01
    assert abs(np.corrcoef(viewers, cands)[0, 1]) < 0.03  # the sides are independent
    # the served path gives the same arms as the vectorised one
    at = np.datetime64("2026-01-01").astype(object)
    for m in ids[:300]:
        served = viewer_assignment(exp, m, at=at).arm
        assert served == exp.arms[viewers[int(m[1:])]].name
        assert candidate_arm(exp, m) == cands[int(m[1:])]
    assert arm_shares(exp.design, [1, 1], "viewer") == pytest.approx(
        [1 - plan.viewer_share, plan.viewer_share]
    )
    with pytest.raises(ValidationError, match="viewer_share"):
        Experiment(id="p2", arms=ARMS, design={"kind": "user", "viewer_share": 0.7})


def test_vectorised_assignment_is_the_served_one() -> None:
    weighted = [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}, {"name": "c"}]
    exp = Experiment(id="p3", salt="s", arms=weighted, offset=0)
    units = [f"u{i}" for i in range(3000)]
    assert buckets("s", units) == [bucket("s", u) for u in units]
    assert arm_indices(exp, units).tolist() == [arm_index(exp, u) for u in units]
    item = Experiment(id="p4", arms=ARMS, design={"kind": "item"}, offset=0)
    assert side_arms(item, units, "candidate").tolist() == [candidate_arm(item, u) for u in units]


def test_poisson_bootstrap_weights_are_poisson_one() -> None:
    assert _POISSON1_CDF[-1] == pytest.approx(1.0, abs=1e-15)
    w = _poisson1(np.random.default_rng(0), (400, 1000))
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02
    assert abs((w == 0).mean() - np.exp(-1)) < 0.005


# -- switchback: the market's memory ------------------------------------------------------------
def test_carry_over_is_measured_on_the_pre_period(pop: sim.Population) -> None:
    """A market that never forgets who was seen remembers the whole pre-period (a lower
    bound); independent exposure remembers nothing."""
    world = _world(pop, "balanced")
    assert carry_over_days(world) == world.market.warmup_days - 1
    assert carry_over_days(_world(pop, "no_interference")) == 0


def test_bounded_seen_memory_shows_a_pass_again_and_never_a_like(pop: sim.Population) -> None:
    """``seen_days``: a pair passed on may come back ``seen_days`` days later, never sooner;
    a liked pair never comes back."""
    w_days = 3
    world = _world(pop, "balanced", seen_days=w_days, warmup_days=2, days=12)
    out = world.run(sim.Ranker(name="control"), sim.Assignment.nobody(pop.n), seed=2)
    order = np.lexsort((out.imp_day, out.imp_pair))
    pair, day, liked = out.imp_pair[order], out.imp_day[order], out.imp_liked[order]
    again = pair[1:] == pair[:-1]
    assert again.any(), "with a seen window some passes must come back"
    assert (day[1:][again] - day[:-1][again] >= w_days).all()
    assert not liked[:-1][again].any()
    # the default market shows a pair at most once
    once = _world(pop, "balanced", warmup_days=2, days=12)
    out = once.run(sim.Ranker(name="control"), sim.Assignment.nobody(pop.n), seed=2)
    assert np.unique(out.imp_pair).shape[0] == out.impressions
