"""Stratified randomisation (:mod:`opendisco.experiments._strata`) and the stratified CR2
(:func:`opendisco.experiments._analysis._cr2` with strata): strata from the pre-period, each
stratum split exactly and each unit's marginal arm probability its weight, and a variance
that no longer counts the effect differences between strata."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from opendisco.experiments import Experiment, sim
from opendisco.experiments._analysis import _collapse, ratio_difference
from opendisco.experiments._simulate import pre_period_clusters, pre_period_strata, simulate
from opendisco.experiments._strata import strata_of, stratified_arms

ARMS = [{"name": "control"}, {"name": "treatment"}]


def _exp(
    salt: str = "s", strata: int = 4, arms: list[dict[str, object]] | None = None
) -> Experiment:
    return Experiment(
        id="strat", salt=salt, arms=arms or ARMS, design={"kind": "cluster", "strata": strata}
    )


def test_strata_group_units_of_similar_size_then_rate() -> None:
    units = [f"c{i}" for i in range(11)]
    size = np.array([3000, 2900, 3100, 2950, 5, 8, 3, 2800, 2990, 7, 6], dtype=float)
    rate = np.array([0.10, 0.30, 0.20, 0.15, 0, 0, 0, 0.25, 0.12, 0, 0], dtype=float)
    s = strata_of(units, size, rate, 4)
    big = np.flatnonzero(size > 100)
    # the six big units: the four lowest rates together, the two highest with small units
    assert len({s[i] for i in big[np.argsort(rate[big])[:4]]}) == 1
    assert np.bincount(s).tolist() == [4, 7]  # 11 = 4 + a short last group joined (4 + 3)
    assert s.tolist() == strata_of(units, size, rate, 4).tolist()  # a pure function
    with pytest.raises(ValueError, match="two units"):
        strata_of(units, size, rate, 1)


def test_each_stratum_is_split_exactly_and_marginals_are_the_weights() -> None:
    units = [f"cluster:c{i}" for i in range(22)]
    strata = np.r_[np.repeat(np.arange(4), 4), np.full(6, 4)]  # four of 4, one of 6
    counts = np.zeros(len(units))
    for k in range(2000):
        arms = stratified_arms(_exp(f"salt-{k}"), units, strata)
        for s in range(5):
            assert arms[strata == s].sum() == (strata == s).sum() // 2
        counts += arms
    assert np.abs(counts / 2000 - 0.5).max() < 0.05  # 4.5 binomial SEs at n = 2000
    a = stratified_arms(_exp("x"), units, strata)
    assert a.tolist() == stratified_arms(_exp("x"), units, strata).tolist()
    assert a.tolist() != stratified_arms(_exp("y"), units, strata).tolist()
    # unequal weights: a stratum of 8 at 1:3 gets exactly 2 control units
    uneq = [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 3}]
    arms8 = stratified_arms(_exp("z", 8, uneq), units[:8], np.zeros(8, dtype=int))
    assert (arms8 == 0).sum() == 2


@pytest.mark.parametrize(
    ("design", "message"),
    [
        ({"kind": "user", "strata": 4}, "cluster or switchback"),
        ({"kind": "cluster", "strata": 3}, "two units of each arm"),
    ],
)
def test_strata_validation(design: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Experiment(id="v", arms=ARMS, design=design)
    assert Experiment(id="v", arms=ARMS, design={"kind": "switchback", "strata": 4})


def test_collapse_merges_a_stratum_with_a_lonely_arm_into_its_neighbour() -> None:
    strata = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    garm = np.array([0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    assert _collapse(strata, garm).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    tail = np.array([0, 0, 0, 0, 1, 1])  # a short tail joins the last full group
    assert _collapse(tail, np.array([0, 0, 1, 1, 0, 1])).tolist() == [0] * 6
    one = np.zeros(4, dtype=int)
    assert _collapse(one, np.array([0, 0, 1, 1])).tolist() == [0] * 4


def test_one_stratum_is_the_unstratified_cr2() -> None:
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(16), rng.integers(20, 60, 16))
    den = rng.integers(2, 20, g.shape[0]).astype(float)
    num = rng.binomial(den.astype(int), 0.2).astype(float)
    arm = (np.arange(16) % 2)[g].astype(float)
    pre = rng.binomial(den.astype(int), 0.2).astype(float)
    for cov in (None, (pre, den)):
        plain = ratio_difference(num, den, arm, groups=g, covariate=cov)
        one = ratio_difference(num, den, arm, groups=g, covariate=cov, strata=np.zeros_like(g))
        assert one.se == pytest.approx(plain.se, rel=1e-9)
        assert one.df == pytest.approx(plain.df, rel=1e-9)
        assert one.effect == plain.effect


def _stratified_world(rng: np.random.Generator) -> tuple[float, ...]:
    """24 equal clusters in 6 strata of 4, each split 2/2; the clusters' rates and effects
    differ between strata (both follow the stratum: what the pre-period predicts), noise
    within. Returns the effect and the (SE, df) of the stratified and the plain CR2."""
    S, per, n = 6, 4, 40
    stratum = np.repeat(np.arange(S), per)
    level = 0.10 + 0.03 * stratum
    effect = 0.005 + 0.02 * stratum  # truth: the mean effect 0.055
    garm = np.concatenate([rng.permutation([0, 0, 1, 1]) for _ in range(S)])
    g = np.repeat(np.arange(S * per), n)
    den = np.full(g.shape[0], 20.0)
    num = rng.binomial(20, level[g] + effect[g] * garm[g]).astype(float)
    arm = garm[g].astype(float)
    strat = ratio_difference(num, den, arm, groups=g, strata=stratum[g])
    plain = ratio_difference(num, den, arm, groups=g)
    assert strat.effect == plain.effect
    return strat.effect, strat.se, strat.df, plain.se


def test_stratified_cr2_drops_the_between_strata_heterogeneity() -> None:
    """Rates and effects that differ between strata only: the plain CR2 counts their spread
    (the level differences the design balanced and Neyman's heterogeneity term), the
    stratified one centres them away — its SE matches the SD of the estimates and its t
    interval covers at the nominal rate."""
    rng = np.random.default_rng(7)
    truth = 0.005 + 0.02 * 2.5
    est = np.array([_stratified_world(rng) for _ in range(1500)])
    sd = est[:, 0].std()
    assert 0.9 < est[:, 1].mean() / sd < 1.1
    assert est[:, 3].mean() / sd > 1.5
    q = stats.t.ppf(0.975, est[:, 2])
    cover = np.mean(np.abs(est[:, 0] - truth) <= q * est[:, 1])
    assert 0.93 <= cover <= 0.97


def test_simulated_stratified_cluster_design_is_the_stratified_assignment() -> None:
    """The simulator assigns the clusters as :func:`stratified_arms` does with the strata of
    their pre-period, and every row carries its cluster's stratum (what the readout
    centres on)."""
    pop = sim.generate_population(sim.PopulationConfig(markets=4, market_size=100), seed=2)
    world = sim.World(pop, sim.REGIMES["balanced"], sim.Ranker(name="control"), seed=2)
    clusters = pre_period_clusters(world, seed=2)
    exp = _exp("a")
    strata = pre_period_strata(exp, world, clusters)
    res = simulate(exp, world, sim.Ranker(name="control"), seed=1, clusters=clusters)
    rows = res.rows
    assert rows.stratum is not None and rows.cluster is not None
    assert (rows.stratum == strata[rows.cluster]).all()
    uniq = np.unique(clusters)
    arms = stratified_arms(exp, [f"cluster:c{int(c)}" for c in uniq], strata[uniq])
    assert (rows.viewer_arm == arms[np.searchsorted(uniq, rows.cluster)]).all()
    assert res.assigned["unit"] == np.bincount(arms, minlength=2).tolist()
    for s in np.unique(strata[uniq]):
        assert abs(int(arms[strata[uniq] == s].sum()) * 2 - int((strata[uniq] == s).sum())) <= 1


def test_stratified_df_is_bell_mccaffrey_of_the_stratified_quadratic_form() -> None:
    """The df the stratified readout passes to its t is Bell–McCaffrey's for *its own*
    quadratic form, not a count: under working independence (uᵢ = √denᵢ·εᵢ iid) the
    stratified CR2 is u'Bu with B = (I − H)QQ'(I − H), H the projection on the stratum × arm
    cells' √den directions (the cell centring), Q's column g √denᵢ / D_a on cluster g scaled
    by (1 − h_g)^(-1/2), h_g = D_g / D_cell; the df is tr(B)² / tr(B²). Unequal clusters,
    four strata of 4 split 2/2. By hand for equal clusters, S strata of 4 split 2/2: each
    cell's form is rank one with eigenvalue 2λ (λ = D_g / D_a², (1 − ½)⁻¹ = 2), so the df is
    (2S·2λ)² / (2S·(2λ)²) = 2S — below the plain CR2's G − 2 and the count G − 1."""
    rng = np.random.default_rng(13)
    S = 4
    G = 4 * S
    stratum = np.repeat(np.arange(S), 4)
    garm = np.concatenate([rng.permutation([0, 0, 1, 1]) for _ in range(S)]).astype(float)
    g = np.repeat(np.arange(G), rng.integers(30, 90, G))
    n = g.shape[0]
    den = rng.integers(3, 30, n).astype(float)
    arm = garm[g]
    num = rng.binomial(den.astype(int), 0.3).astype(float)
    e = ratio_difference(num, den, arm, groups=g, strata=stratum[g])
    D = np.array([den[arm == a].sum() for a in (0, 1)])
    cell = stratum[g] * 2 + arm.astype(int)
    v = np.stack([np.sqrt(den) * (cell == c) for c in range(2 * S)], axis=1)
    v /= np.linalg.norm(v, axis=0)
    gd = np.bincount(g, den)
    h = gd / np.bincount(stratum * 2 + garm.astype(int), gd)[stratum * 2 + garm.astype(int)]
    Q = np.zeros((n, G))
    Q[np.arange(n), g] = np.sqrt(den) / D[arm.astype(int)]
    Q /= np.sqrt(1 - h)
    resid = np.eye(n) - v @ v.T
    B = resid @ Q @ Q.T @ resid
    assert e.df == pytest.approx(np.trace(B) ** 2 / np.trace(B @ B), rel=1e-9)
    # the variance itself is that quadratic form at the observed data: u = √den·(y − cell mean)
    u = np.sqrt(den) * (num / den)
    assert e.se**2 == pytest.approx(float(u @ B @ u), rel=1e-9)
    # equal clusters by hand: 2S, below G − 2 (the plain CR2's df) and G − 1 (the count)
    g2 = np.repeat(np.arange(G), 50)
    den2 = np.full(g2.shape[0], 8.0)
    num2 = rng.binomial(8, 0.3, g2.shape[0]).astype(float)
    strat = ratio_difference(num2, den2, garm[g2], groups=g2, strata=stratum[g2])
    plain = ratio_difference(num2, den2, garm[g2], groups=g2)
    assert strat.df == pytest.approx(2 * S)
    assert plain.df == pytest.approx(G - 2)
    assert strat.df < plain.df < G - 1
