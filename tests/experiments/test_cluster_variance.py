"""The cluster-robust variance of the cluster design against closed forms: Bell–McCaffrey's
degrees of freedom against the quadratic form written out unit by unit, and CUPED's θ
shrinkage of the cluster sums against its working model simulated directly."""

from __future__ import annotations

import numpy as np
import pytest

from opendisco.experiments._analysis import _influence, _theta_shrinkage, ratio_difference


def _clusters(rng: np.random.Generator, big: int, singles: int) -> np.ndarray:
    sizes = np.r_[rng.integers(40, 120, big), np.ones(singles, dtype=int)]
    return np.repeat(np.arange(sizes.shape[0]), sizes)


def test_bm_df_is_the_quadratic_form_of_the_cr2_variance() -> None:
    """Under working independence (unit ratios with variance ∝ 1 / impressions, i.e.
    uᵢ = √denᵢ·εᵢ iid), the CR2 variance is u'Bu with B = (I − H)QQ'(I − H): H projects on
    the two arms' √den directions, Q's column g is √denᵢ / D_a on cluster g scaled by
    (1 − h_g)^(-1/2). Bell–McCaffrey's df is tr(B)² / tr(B²); equal clusters in equal
    arms give G − 2."""
    rng = np.random.default_rng(11)
    g = _clusters(rng, 9, 12)
    G = int(g.max()) + 1
    den = rng.integers(3, 30, g.shape[0]).astype(float)
    garm = np.zeros(G)
    garm[rng.permutation(G)[: G // 2]] = 1
    garm[:2] = (0, 1)  # a big cluster in each arm
    arm = garm[g]
    num = rng.binomial(den.astype(int), 0.3).astype(float)
    e = ratio_difference(num, den, arm, groups=g)
    D = np.array([den[arm == a].sum() for a in (0, 1)])
    Da = D[arm.astype(int)]
    v = np.stack([np.sqrt(den) * (arm == a) / np.sqrt(D[a]) for a in (0, 1)], axis=1)
    gd = np.bincount(g, den)
    h = gd / D[garm.astype(int)]
    Q = np.zeros((g.shape[0], G))
    Q[np.arange(g.shape[0]), g] = np.sqrt(den) / Da
    Q /= np.sqrt(1 - h)
    resid = np.eye(g.shape[0]) - v @ v.T
    B = resid @ Q @ Q.T @ resid
    assert e.df == pytest.approx(np.trace(B) ** 2 / np.trace(B @ B), rel=1e-9)
    # equal clusters, equal arms: G − 2
    g2 = np.repeat(np.arange(12), 50)
    arm2 = (np.arange(12) % 2)[g2].astype(float)
    den2 = np.full(g2.shape[0], 8.0)
    num2 = rng.binomial(8, 0.3, g2.shape[0]).astype(float)
    assert ratio_difference(num2, den2, arm2, groups=g2).df == pytest.approx(10.0)


def test_theta_shrinkage_is_the_expected_loss_of_each_cluster_sum() -> None:
    """Fixed arms and covariate (with both a cluster part and a member part), outcomes drawn
    from the working model itself: each cluster's CUPED-adjusted influence sum has mean
    square λ_g·(1 − h_g − k_g), k_g from :func:`_theta_shrinkage`. Checked over 4,000 draws
    on the clusters that carry the variance."""
    rng = np.random.default_rng(5)
    g = _clusters(rng, 8, 6)
    G = int(g.max()) + 1
    n = g.shape[0]
    den = rng.integers(3, 30, n).astype(float)
    garm = np.zeros(G)
    garm[[0, 2, 4, 6, 8, 10, 12]] = 1
    arm = garm[g]
    xd = rng.integers(3, 30, n).astype(float)
    xn = xd * np.clip(0.3 + rng.normal(0, 0.05, G)[g] + rng.normal(0, 0.1, n), 0.01, 1)
    _, fx = _influence(xn, xd, arm)
    k = _theta_shrinkage(fx, den, arm, g)
    D = np.array([den[arm == a].sum() for a in (0, 1)])[garm.astype(int)]
    gd = np.bincount(g, den)
    lam, h = gd / D**2, gd / D
    sq = np.zeros(G)
    draws = 4000
    for _ in range(draws):
        num = 0.3 * den + np.sqrt(den) * rng.normal(0, 1, n)  # ε iid: the working model
        _, fy = _influence(num, den, arm)
        theta = fy @ fx / (fx @ fx)
        sq += np.bincount(g, fy - theta * fx) ** 2
    big = gd > 1000
    assert np.abs(k[big]).max() > 0.01  # the covariate's cluster part does shrink them
    expected = lam * (1 - h - k)
    np.testing.assert_allclose(sq[big] / draws, expected[big], rtol=0.08)


def test_member_level_covariate_keeps_the_cluster_se_unbiased() -> None:
    """A covariate that predicts each member's own noise but nothing about the cluster
    shocks (the simulated marketplace: member θ ≈ 0.2, the cities' pre-period rates do not
    predict their run), 8 big clusters and 20 singletons: θ takes nothing from the cluster
    sums, so the CUPED SE is not inflated and the level holds."""
    rng = np.random.default_rng(9)
    g = _clusters(rng, 8, 20)
    G = int(g.max()) + 1
    n = g.shape[0]
    den = rng.integers(5, 25, n).astype(float)
    pre_den = rng.integers(5, 25, n).astype(float)
    member = rng.normal(0, 0.08, n)
    pre = rng.binomial(pre_den.astype(int), np.clip(0.25 + member, 0.01, 1)).astype(float)
    ests, ses, rejected = [], [], []
    for _ in range(1500):
        garm = rng.random(G) < 0.5
        if garm[:8].all() or not garm[:8].any():
            continue
        shock = rng.normal(0, 0.03, G)
        p = np.clip(0.25 + member + shock[g], 0.01, 1)
        num = rng.binomial(den.astype(int), p).astype(float)
        e = ratio_difference(num, den, garm[g].astype(float), groups=g, covariate=(pre, pre_den))
        if not np.isfinite(e.se):
            continue
        ests.append(e.effect)
        ses.append(e.se)
        rejected.append(e.p < 0.05)
    assert len(ests) > 1300
    # E[SE] sits below the SD by Jensen with ~5 df; charging θ each cluster's share of
    # Σ f_x² (the previous rule) gave 1.08 and 0.026 here
    assert 0.8 <= np.mean(ses) / np.std(ests) <= 1.0
    assert 0.035 <= np.mean(rejected) <= 0.07
