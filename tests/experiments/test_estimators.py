"""Estimators against constructed examples with a known answer: TSRI-k on cells whose rates
are set by hand, the two-way bootstrap against a closed-form variance, CUPED's θ with a
dozen clusters, the switchback plan and its two readouts."""

from __future__ import annotations

import numpy as np
import pytest

from opendisco.experiments import Design, analyze, switchback_plan
from opendisco.experiments._analysis import Exposures, _influence, ratio_difference
from opendisco.experiments._twosided import tsri, tsri_family


def _crossed(nv: int, nc: int, per_viewer: int, rng: np.random.Generator):
    """Viewers × candidates, each viewer shown ``per_viewer`` distinct candidates, half of
    them from each candidate arm; arms split exactly in half on both sides."""
    va = np.zeros(nv, dtype=np.int64)
    va[rng.permutation(nv)[: nv // 2]] = 1
    ca = np.arange(nc) % 2
    treated, control = np.flatnonzero(ca == 1), np.flatnonzero(ca == 0)
    half = per_viewer // 2
    c = np.concatenate(
        [
            np.r_[rng.choice(treated, half, False), rng.choice(control, half, False)]
            for _ in range(nv)
        ]
    )
    v = np.repeat(np.arange(nv), per_viewer)
    return v, c, va, ca


@pytest.mark.parametrize(("beta", "k"), [(0.5, 0.0), (0.3, 1.0), (0.8, 2.0)])
def test_tsri_k_is_the_interpolation_plus_k_times_the_spillovers(beta: float, k: float) -> None:
    """Outcomes set to each cell's rate: the estimate is exactly
    β(r11 − r01) + (1 − β)(r11 − r10) + kβ(1 − β)(r01 + r10 − 2 r00); without spillovers
    (r01 = r10 = r00) every k gives r11 − r00, the effect."""
    rng = np.random.default_rng(1)
    v, c, va, ca = _crossed(60, 40, 10, rng)
    cell = 2 * va[v] + ca[c]
    for r in ([0.10, 0.14, 0.12, 0.30], [0.10, 0.10, 0.10, 0.25]):
        y = np.asarray(r)[cell]
        e = tsri(v, c, va[v], ca[c], y, np.ones_like(y), beta=beta, k=k, bootstrap=20)
        r00, r01, r10, r11 = r
        want = beta * (r11 - r01) + (1 - beta) * (r11 - r10)
        want += k * beta * (1 - beta) * (r01 + r10 - 2 * r00)
        assert e.effect == pytest.approx(want, abs=1e-12)
        assert [e.extra[f"r{x}"] for x in ("00", "01", "10", "11")] == pytest.approx(r)
    assert e.effect == pytest.approx(0.15, abs=1e-12)  # no spillover: r11 − r00 for any k


@pytest.mark.parametrize(("beta", "k"), [(0.5, 0.0), (0.6, 2.0)])
def test_two_way_bootstrap_se_matches_the_closed_form(beta: float, k: float) -> None:
    """Outcome = viewer effect u_v ~ N(0, σ²) only, every viewer shown as many treated as
    control candidates: r01 = r00 = mean of u over control viewers, r11 = r10 = over treated
    ones, so TSRI-k = β(1 + k(1 − β))·(ū₁ − ū₀) with variance
    [β(1 + k(1 − β))]²·σ²·(1/n₁ + 1/n₀). The two-way bootstrap SE averages to it."""
    rng = np.random.default_rng(2)
    nv, sigma = 300, 0.2
    factor = beta * (1 + k * (1 - beta))
    closed = factor * sigma * np.sqrt(4 / nv)  # 1/n₁ + 1/n₀ = 4/nv
    ses, ests = [], []
    for rep in range(40):
        v, c, va, ca = _crossed(nv, 200, 40, rng)
        u = rng.normal(0, sigma, nv)
        y = u[v]
        e = tsri(v, c, va[v], ca[c], y, np.ones_like(y), beta=beta, k=k, bootstrap=200, seed=rep)
        d = u[va == 1].mean() - u[va == 0].mean()
        assert e.effect == pytest.approx(factor * d, abs=1e-9)
        ses.append(e.se)
        ests.append(e.effect)
    assert np.mean(ses) == pytest.approx(closed, rel=0.1)
    assert np.std(ests) == pytest.approx(closed, rel=0.3)  # 40 draws of the real spread


def test_cuped_theta_over_members_removes_most_of_the_few_cluster_bias() -> None:
    """Twelve clusters with fixed potential outcomes: members differ (a member's pre-period
    rate predicts their own later rate, as in a marketplace), clusters differ, and the
    effect grows with the distance of the cluster's rate from the mean. A θ fitted on the
    twelve cluster sums follows the assignment and is biased (Freedman 2008; computed here
    by hand); θ fitted over the members moves far less with it. Over many assignments the
    CUPED estimate's bias is under 0.4 of the cluster-sum θ's, and its variance far below
    the unadjusted estimate's."""
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(12), 150)
    centre = np.linspace(0.15, 0.35, 12)[g]
    rate = np.clip(centre + rng.normal(0, 0.15, g.shape[0]), 0.01, 0.9)
    pre_den = rng.integers(20, 40, g.shape[0]).astype(float)
    pre = rng.binomial(pre_den.astype(int), rate).astype(float)
    den = rng.integers(20, 40, g.shape[0]).astype(float)
    y0 = rng.binomial(den.astype(int), rate).astype(float)
    lift = 0.02 + 5.0 * (centre - centre.mean()) ** 2 + 0.3 * (rate - centre)
    y1 = rng.binomial(den.astype(int), np.clip(rate + lift, 0, 1)).astype(float)
    truth = y1.sum() / den.sum() - y0.sum() / den.sum()
    ests, plain, by_cluster = [], [], []
    for _ in range(1500):
        arm = (rng.random(12) < 0.5)[g].astype(float)
        if arm.all() or not arm.any():
            continue
        num = np.where(arm == 1, y1, y0)
        ests.append(ratio_difference(num, den, arm, groups=g, covariate=(pre, pre_den)).effect)
        plain.append(ratio_difference(num, den, arm, groups=g).effect)
        dy, fy = _influence(num, den, arm)
        dx, fx = _influence(pre, pre_den, arm)
        sy, sx = np.bincount(g, fy), np.bincount(g, fx)
        by_cluster.append(dy - (sy @ sx) / (sx @ sx) * dx)
    bias = np.mean(ests) - truth
    bias_cluster = np.mean(by_cluster) - truth
    mcse = np.std(by_cluster) / np.sqrt(len(by_cluster))
    assert abs(bias_cluster) > 3 * mcse  # θ on the cluster sums: biased
    assert abs(bias) < 0.4 * abs(bias_cluster)
    assert np.std(ests) < 0.5 * np.std(plain)


@pytest.mark.parametrize(
    ("carry", "pre", "run", "want"),
    [
        (0, 7, 14, (1, 0, False)),  # no memory: daily switches, nothing dropped
        (2, 7, 14, (3, 2, False)),
        (6, 7, 14, (14, 0, True)),  # censored by the pre-period: one period, the whole run
        (4, 14, 8, (8, 0, False)),  # two periods of 5 days do not fit in 8
    ],
)
def test_switchback_plan(carry: int, pre: int, run: int, want: tuple[int, int, bool]) -> None:
    p = switchback_plan(carry, pre, run)
    assert (p.period_days, p.burn_in_days, p.censored) == want
    d = Design.model_validate(p.design())
    assert d.period_minutes == want[0] * 1440 and d.burn_in_minutes == want[1] * 1440


def _switchback_rows(periods: int, effect: float, rng: np.random.Generator) -> Exposures:
    """12 regions × 14 days × 30 viewers per region, each viewer 4 impressions a day; a
    region-level shock, a day trend, and ``effect`` on the mutual-like rate when treated."""
    regions, days, per = 12, 14, 30
    period_len = days // periods
    arm_grid = rng.random((periods, regions)) < 0.5
    arm_grid[0, :6], arm_grid[0, 6:] = True, False  # both arms present
    shock = rng.normal(0, 0.03, regions)
    v, d = np.meshgrid(np.arange(regions * per), np.arange(days), indexing="ij")
    v, d = np.repeat(v.ravel(), 4), np.repeat(d.ravel(), 4)
    region = v // per
    period = d // period_len
    arm = arm_grid[period, region].astype(np.int64)
    p = np.clip(0.2 + shock[region] - 0.004 * d + effect * arm, 0, 1)
    y = (rng.random(v.shape[0]) < p).astype(float)
    outcomes = {"mutual": y, "likes": y, "matches": y}
    zero = np.zeros_like(v)
    return Exposures(v, zero, arm, zero, outcomes, None, region, period, np.zeros(v.shape[0], bool))


@pytest.mark.parametrize("periods", [1, 14])
def test_switchback_readouts_recover_the_effect(periods: int) -> None:
    """Daily periods: (region, day) units with region and day fixed effects, HC2. One
    period over the run: viewers with the regions as clusters. Both recover the effect and
    cover it at about the nominal rate."""
    rng = np.random.default_rng(5)
    design = Design(kind="switchback", period_minutes=1440 * (14 // periods))
    ests, cover = [], []
    for _ in range(150):
        rows = _switchback_rows(periods, 0.05, rng)
        e = analyze(design, ["c", "t"], [1, 1], rows, metrics=["mutual_likes_per_1000"]).estimate(
            "mutual_likes_per_1000"
        )
        ests.append(e.effect)
        cover.append(e.ci_low <= 50.0 <= e.ci_high)
    assert ("one period" in e.estimator) == (periods == 1)
    assert abs(np.mean(ests) - 50.0) < 3 * np.std(ests) / np.sqrt(len(ests))
    assert 0.88 <= np.mean(cover) <= 0.995


def test_tsri_family_is_tsri_for_each_k_on_the_same_draws() -> None:
    rng = np.random.default_rng(6)
    v, c, va, ca = _crossed(80, 60, 12, rng)
    y = (rng.random(v.shape[0]) < 0.2 + 0.1 * (va[v] & ca[c])).astype(float)
    args = (v, c, va[v], ca[c], y, np.ones_like(y))
    family = tsri_family(*args, beta=0.4, ks=(0.0, 1.0, 2.0), bootstrap=50, seed=3)
    for k, e in zip((0.0, 1.0, 2.0), family, strict=True):
        one = tsri(*args, beta=0.4, k=k, bootstrap=50, seed=3)
        assert (e.effect, e.se, e.extra) == (one.effect, one.se, one.extra)


def test_a_viewer_who_moved_regions_counts_under_each_regions_arm() -> None:
    """One period over the run (regions randomised): a third of the viewers move to the
    next region half-way, so their rows took two arms. Each row's outcome is its arm's rate
    (0.2 control, 0.3 treated): the effect is exactly 100 per 1,000. Before, a moved viewer
    was one unit with its first row's arm, its rows under the other arm counted in it: 67."""
    regions, per, k = 20, 30, 20
    region_arm = np.tile([0, 1], regions // 2)
    viewer = np.repeat(np.arange(regions * per), k)
    step = np.tile(np.arange(k), regions * per)
    home = viewer // per
    moved = (viewer % 3 == 0) & (step >= k // 2)
    region = np.where(moved, (home + 1) % regions, home)
    arm = region_arm[region]
    y = 0.2 + 0.1 * arm
    zero = np.zeros_like(viewer)
    rows = Exposures(viewer, zero, arm, zero, {"mutual": y}, None, region, zero, zero.astype(bool))
    design = Design(kind="switchback", period_minutes=1440)
    e = analyze(design, ["c", "t"], [1, 1], rows, metrics=["mutual_likes_per_1000"])
    est = e.estimate("mutual_likes_per_1000")
    assert "one period" in est.estimator
    assert est.effect == pytest.approx(100.0)
