"""The attention cap (pure): a controller whose setpoint is the top-1% share of inbound
attention itself (``signals._pacing.water_level`` / ``cap_step``), and the pacing step that
moves members above the cap below the page (that it never adds a row, with every other market
knob: ``test_market_steps_never_surface_an_ineligible_candidate``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from opendisco.rerank import (
    CandidateBatch,
    Features,
    RerankConfig,
    RerankContext,
    Reranker,
    attention_excess,
)
from opendisco.signals import (
    PacingState,
    PacingTargets,
    attention_stats,
    cap_step,
    pacing_step,
    water_level,
)

CAP = PacingTargets(top1_share=0.03, attention_cap=True, cap_gain=1.0)


def _skewed(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(3.0 * np.exp(1.2 * rng.normal(size=n))).astype(float)


def test_water_level_gives_the_target_share() -> None:
    counts = _skewed()
    free = attention_stats(counts)[0]
    assert free > 0.05
    for target in (0.04, 0.03, 0.02):
        level = water_level(counts, target)
        assert level is not None and level < counts.max()
        assert attention_stats(np.minimum(counts, level))[0] == pytest.approx(target, rel=1e-6)
    # a tighter target, a lower cap; within the target already: no cap
    assert water_level(counts, 0.02) < water_level(counts, 0.04)  # type: ignore[operator]
    assert water_level(counts, free + 0.01) is None
    assert water_level(np.zeros(50), 0.01) is None
    # out of reach (every member with attention is in the top 1%): the smallest cap tried
    few = np.r_[10.0, np.zeros(99)]
    assert water_level(few, 0.5) == pytest.approx(0.1, rel=1e-6)


def test_cap_step_starts_at_the_water_level_and_integrates_the_share_error() -> None:
    counts = _skewed()
    mean = counts.mean()
    share = attention_stats(counts)[0]
    first = cap_step(None, counts, share, CAP, 1.0)
    assert first is not None
    assert mean * np.exp(first) == pytest.approx(water_level(counts, 0.03), rel=1e-9)
    # above the target: tighter by gain · Δt · error (the error clipped to ±1); below: looser
    tighter = cap_step(first, counts, 0.045, CAP, 1.0)
    assert tighter == pytest.approx(first - 0.5)
    assert cap_step(first, counts, 0.015, CAP, 1.0) == pytest.approx(first + 0.5)
    wide = replace(CAP, cap_min=0.1)
    assert cap_step(first, counts, 0.3, wide, 1.0) == pytest.approx(first - 1.0)
    # the gain is per day: two half-day steps at the same error move as far as one day
    half = cap_step(cap_step(first, counts, 0.045, CAP, 0.5), counts, 0.045, CAP, 0.5)
    assert half == pytest.approx(tighter)
    # clamped to [cap_min, cap_max] × the mean (anti-windup)
    lo, hi = np.log(CAP.cap_min), np.log(CAP.cap_max)
    assert cap_step(lo, counts, 0.3, CAP, 1.0) == pytest.approx(lo)
    assert cap_step(hi, counts, 0.0, CAP, 1.0) == pytest.approx(hi)
    # a market within the target starts loosest; off, or nobody with attention: no cap
    assert cap_step(None, np.ones(500), 0.01, CAP, 1.0) == pytest.approx(hi)
    assert cap_step(None, counts, share, replace(CAP, attention_cap=False), 1.0) is None
    assert cap_step(first, np.zeros(100), 0.0, CAP, 1.0) is None


def _capped_market(
    cap: float | None, rate: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A day of a toy market: each member is shown Poisson(rate) times, half the impressions
    become likes at the end of the day; with a cap, a member is shown only while its 7-day
    count plus its impressions today are within the cap (the pacing step's rule); counts decay
    over a week."""
    shown = rng.poisson(rate)
    if cap is not None:
        allowed = np.where(counts <= cap, np.floor(cap - counts) + 1, 0)
        shown = np.minimum(shown, allowed).astype(np.int64)
    return counts * (1.0 - 1.0 / 7.0) + rng.binomial(shown, 0.5)


def _run(targets: PacingTargets, days: int = 60) -> tuple[list[float], PacingState, float]:
    rng = np.random.default_rng(1)
    rate = 0.6 * np.exp(1.0 * rng.normal(size=3000))
    counts = np.zeros_like(rate)
    for _ in range(20):  # no cap: the market settles
        counts = _capped_market(None, rate, counts, rng)
    free = attention_stats(counts)[0]
    state = PacingState(budget=8.0)
    shares = []
    for _ in range(days):
        state = pacing_step(state, counts, 1.0, targets)
        counts = _capped_market(state.attention_cap, rate, counts, rng)
        shares.append(attention_stats(counts)[0])
    return shares, state, free


def test_controller_steers_the_measured_top_share_to_its_setpoint() -> None:
    shares, state, free = _run(CAP)
    assert free > 3 * CAP.top1_share
    # the last three weeks sit at the setpoint
    assert np.mean(shares[-21:]) == pytest.approx(CAP.top1_share, rel=0.03)
    assert state.attention_cap is not None
    # without the integral (the water level of the first measurement, kept) the cap misses:
    # the water level assumes the capped members keep their attention, but their impressions
    # go to others, so the top share ends below the setpoint (attention cut for nothing)
    kept, _, _ = _run(replace(CAP, cap_gain=1e-9))
    assert np.mean(kept[-21:]) < 0.9 * CAP.top1_share
    # a looser setpoint, a looser cap
    _, loose, _ = _run(replace(CAP, top1_share=0.05))
    assert loose.attention_cap > state.attention_cap  # type: ignore[operator]


def test_state_round_trip_and_cap_units() -> None:
    state = pacing_step(PacingState(budget=8.0), _skewed(), 2.0, CAP)
    assert state.cap_log is not None
    assert state.attention_cap == pytest.approx(state.mean_inbound * np.exp(state.cap_log))
    again = PacingState.from_doc(state.to_doc(), 8.0)
    assert again == state
    # a document stored before the cap existed reads as no cap
    old = {k: v for k, v in state.to_doc().items() if k != "cap_log"}
    assert PacingState.from_doc(old, 8.0).attention_cap is None


def _batch(n: int, member: bool = True) -> CandidateBatch:
    items = [
        {"id": f"p{i}", "kind": "profile" if member else "movie", "owner_id": f"m{i}"}
        for i in range(n)
    ]
    return CandidateBatch.from_items(items, fused=list(np.linspace(1.0, 0.5, n)))


def _feats(n: int, inbound: np.ndarray, exposure: np.ndarray | None = None) -> Features:
    base = Features.empty(n, 4, 2)
    exposure = np.zeros(n) if exposure is None else exposure
    return Features(**{**base.__dict__, "inbound": inbound, "exposure": exposure})


def test_pacing_step_moves_members_over_the_cap_below_the_page() -> None:
    n = 8
    inbound = np.array([30.0, 2.0, 12.0, 1.0, 0.0, 3.0, 2.0, 1.0])
    shown = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0])  # impressions this window
    assert attention_excess(inbound, shown, 10.0) == pytest.approx((inbound + shown) / 10)
    cfg = RerankConfig(steps=("score", "pacing", "mmr"), weights={"fused": 1.0})
    off = Reranker(cfg).run(_batch(n), _feats(n, inbound, shown), RerankContext(k=3))
    assert off.ids[:3] == ["p0", "p1", "p2"]
    # no budget needed: the cap alone acts; p0 and p2 are over it, the most over (p0) last
    ctx = RerankContext(k=3, pacing_attention_cap=10.0)
    on = Reranker(cfg).run(_batch(n), _feats(n, inbound), ctx, timed=True)
    assert on.ids[:3] == ["p1", "p3", "p4"]
    assert on.ids.index("p2") < on.ids.index("p0")
    assert sorted(on.ids) == sorted(off.ids)  # a permutation: nothing added or dropped
    assert on.trace.changes("pacing")
    # impressions served in the window count as attention on its way: p6 (2 likes, 9
    # impressions) is over a cap of 10 as well, and p5 (3 likes) fills in after p4
    both = Reranker(cfg).run(
        _batch(n), _feats(n, inbound, shown), RerankContext(k=5, pacing_attention_cap=10.0)
    )
    assert both.ids[:5] == ["p1", "p3", "p4", "p5", "p7"]
    # too few members under the cap: the page is completed by the least over
    few = RerankContext(k=3, pacing_attention_cap=0.5)
    page = Reranker(cfg).run(_batch(n), _feats(n, inbound), few).ids[:3]
    assert set(page) == {"p4", "p3", "p7"}  # p4 within, then the least over (2 likes / 0.5)
    # a one-sided catalogue: nothing moves, whatever the cap
    movies = Reranker(cfg).run(_batch(n, member=False), _feats(n, inbound), ctx)
    assert movies.ids == Reranker(cfg).run(_batch(n, member=False), _feats(n, inbound)).ids
