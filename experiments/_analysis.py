"""Analysis: aggregate to the randomisation unit, estimate, and refuse a broken readout.

* **Difference in means of a ratio metric** (Σ numerator / Σ impressions per arm) by weighted
  least squares of the unit ratios on the arm, weights = the unit's impressions: the
  coefficient is the difference of the two ratios and its heteroskedasticity-robust (HC1)
  standard error is the delta-method one. **CUPED** for ratio metrics (Deng et al. 2013): the
  difference less θ times the arms' difference of *pre-period* ratios, θ and the SE from
  the units' influence functions. **Cluster-robust** standard errors for the cluster
  design: CR2 with Bell–McCaffrey degrees of freedom (:func:`_cr2`: the few, unequal
  clusters a community partition gives make CR1 with G − 1 df too optimistic). For the
  switchback design ((region, period) units, region and period fixed effects, burn-in rows
  dropped) HC2 through statsmodels: the units are assigned independently, so the
  assignment needs no wider clustering (Abadie, Athey, Imbens & Wooldridge 2023).
* **Two-sided**: TSRI-k(β) from the four cells, two-way bootstrap SE (:mod:`._twosided`).
* **Sample-ratio mismatch**: χ² (scipy) of the units per arm against the design's shares, on
  assignments and on exposures, viewer and candidate side; the family is held at
  ``SRM_ALPHA`` (Bonferroni) and a mismatch blocks the readout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import chdtrc, stdtr, stdtrit

__all__ = [
    "SRM_ALPHA",
    "Estimate",
    "Exposures",
    "SrmCheck",
    "aggregate",
    "ratio_difference",
    "srm_blocks",
    "srm_check",
]

SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Estimate:
    """One treatment-vs-control contrast of one metric."""

    estimator: str
    effect: float
    se: float
    ci_low: float
    ci_high: float
    p: float
    control: float  # the control arm's ratio (× scale)
    treatment: float
    units: tuple[int, int]  # control, treatment
    df: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""  # why there is no interval (:func:`~._readout.without_interval`)

    @property
    def relative(self) -> float:
        return self.effect / self.control if self.control else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "effect": self.effect,
            "se": self.se,
            "ci": [self.ci_low, self.ci_high],
            "p": self.p,
            "control": self.control,
            "treatment": self.treatment,
            "relative": self.relative,
            "units": list(self.units),
            "df": self.df,
            **self.extra,
            "note": self.note,
        }


@dataclass(frozen=True)
class Exposures:
    """Impression rows of an experiment (integer codes; -1 = none) and their outcomes."""

    viewer: np.ndarray
    candidate: np.ndarray
    viewer_arm: np.ndarray
    candidate_arm: np.ndarray
    outcomes: Mapping[str, np.ndarray]  # per row: likes, mutual, matches
    cluster: np.ndarray | None = None
    region: np.ndarray | None = None
    period: np.ndarray | None = None
    burn_in: np.ndarray | None = None
    impressions: np.ndarray | None = None  # per row (default 1)
    stratum: np.ndarray | None = None  # per row: the stratum of its unit (stratified designs)

    @property
    def weight(self) -> np.ndarray:
        return np.ones(self.viewer.shape[0]) if self.impressions is None else self.impressions

    def subset(self, keep: np.ndarray) -> Exposures:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[keep]

        return Exposures(
            self.viewer[keep],
            self.candidate[keep],
            self.viewer_arm[keep],
            self.candidate_arm[keep],
            {k: v[keep] for k, v in self.outcomes.items()},
            cut(self.cluster),
            cut(self.region),
            cut(self.period),
            cut(self.burn_in),
            cut(self.impressions),
            cut(self.stratum),
        )


def aggregate(keys: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(unique keys, per-key sums of each column...)``."""
    uniq, inv = np.unique(keys, return_inverse=True)
    return (uniq, *(np.bincount(inv, weights=c, minlength=uniq.shape[0]) for c in cols))


def ratio_difference(
    num: np.ndarray,
    den: np.ndarray,
    arm: np.ndarray,
    *,
    scale: float = 1.0,
    groups: np.ndarray | None = None,
    covariate: tuple[np.ndarray, np.ndarray] | None = None,
    fixed: Sequence[np.ndarray] | None = None,
    strata: np.ndarray | None = None,
    estimator: str = "difference",
    alpha: float = 0.05,
) -> Estimate:
    """Ratio of arm 1 minus ratio of arm 0 over units (rows), see the module docstring.
    ``groups``: cluster ids (cluster-robust); ``covariate``: the unit's pre-period numerator
    and denominator (CUPED); ``fixed``: fixed-effect ids, one array per factor (switchback
    regions and periods; HC2 unless ``groups``); ``strata``: the stratum of each unit when the
    clusters were randomised within strata (:mod:`._strata`): CR2 then centres each cluster on
    its stratum × arm cell (:func:`_cr2`)."""
    ok = den > 0
    num, den, arm = num[ok], den[ok], arm[ok].astype(float)
    units = (int((arm == 0).sum()), int((arm == 1).sum()))
    if min(units) == 0 or sum(units) < 3:
        # an arm without an exposed unit, or no residual left: no contrast to estimate (the
        # regression divided by zero), the arms' own rates still reported
        nan = float("nan")
        rates = [
            float(num[arm == a].sum() / den[arm == a].sum()) * scale if n else nan
            for a, n in enumerate(units)
        ]
        return Estimate(estimator, nan, nan, nan, nan, nan, *rates, units, nan)
    rates = [float(num[arm == a].sum() / den[arm == a].sum()) * scale for a in (0, 1)]
    g = None if groups is None else np.unique(groups[ok], return_inverse=True)[1]
    st = None if strata is None or g is None else strata[ok]
    if fixed is None and (covariate is not None or g is not None):
        xn = xd = None
        if covariate is not None:
            xn, xd = covariate[0][ok], covariate[1][ok]
            if not all(xd[arm == a].sum() > 0 for a in (0, 1)):
                xn = xd = None
        if xn is not None or g is not None:
            return _cuped(num, den, arm, xn, xd, g, scale, alpha, estimator, rates, units, st)
    from statsmodels.regression.linear_model import WLS  # pandas + scipy.stats: seconds

    y = num / den
    cols = [np.ones_like(y), arm]
    for factor in fixed or ():
        f = factor[ok]
        for lv in np.unique(f)[1:]:
            cols.append((f == lv).astype(float))
    X = np.column_stack(cols)
    model = WLS(y, X, weights=den)
    if g is not None:
        res = model.fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)
        df = float(np.unique(g).shape[0] - 1)
    else:
        # leverage 1 (HC2) or no residual df after the fixed effects: NaN, not a warning
        with np.errstate(divide="ignore", invalid="ignore"):
            res = model.fit(cov_type="HC1" if fixed is None else "HC2", use_t=True)
        df = float(res.df_resid)
    effect = float(res.params[1]) * scale
    se = float(res.bse[1]) * scale
    lo, hi = (float(v) * scale for v in res.conf_int(alpha)[1])
    return Estimate(estimator, effect, se, lo, hi, float(res.pvalues[1]), *rates, units, df)


def _influence(num: np.ndarray, den: np.ndarray, arm: np.ndarray) -> tuple[float, np.ndarray]:
    """``R₁ − R₀`` and each unit's influence on it (delta method):
    ``±(numᵢ − R_a·denᵢ) / Σ_a den`` for the unit's arm ``a``."""
    phi = np.zeros_like(num, dtype=float)
    diff = 0.0
    for a, sign in ((0, -1.0), (1, 1.0)):
        m = arm == a
        r = num[m].sum() / den[m].sum()
        phi[m] = sign * (num[m] - r * den[m]) / den[m].sum()
        diff += sign * r
    return diff, phi


def _cuped(
    num: np.ndarray,
    den: np.ndarray,
    arm: np.ndarray,
    xn: np.ndarray | None,
    xd: np.ndarray | None,
    g: np.ndarray | None,
    scale: float,
    alpha: float,
    estimator: str,
    rates: list[float],
    units: tuple[int, int],
    strata: np.ndarray | None = None,
) -> Estimate:
    """CUPED for a ratio metric (Deng, Xu, Kohavi & Walker 2013, delta method): the
    difference of the arms' ratios less θ times the difference of their *pre-period* ratios
    (Σ pre numerators / Σ pre denominators). The pre-period difference is zero in expectation
    under randomisation whatever the treatment does to the exposure weights — adjusting the
    unit ratios in a regression weighted by post-period impressions is not: a treatment that
    moves impressions between units moves the covariate's weighted mean too, and the
    adjustment removes part of the effect. θ and the standard error come from the units'
    influence functions (no covariate: θ = 0). With clusters ``g`` see :func:`_cr2` and
    :func:`_theta_shrinkage`; otherwise HC1, t with n − 2 df."""
    dy, fy = _influence(num, den, arm)
    dx, fx = (0.0, np.zeros_like(fy)) if xn is None or xd is None else _influence(xn, xd, arm)
    n = num.shape[0]
    # θ from the units' influences, also when they sit in clusters: fitted on a dozen
    # cluster sums it follows the cluster assignment (Freedman 2008: regression adjustment
    # is biased by O(1/G) — −2% with the simulated market's 12 informative clusters); over
    # the n units it hardly moves with the assignment (O(1/n))
    theta = float(fy @ fx / (fx @ fx)) if fx @ fx > 0 else 0.0
    if g is not None:
        garm = np.zeros(int(g.max()) + 1)
        garm[g] = arm
        gst = None
        if strata is not None:
            gst = np.zeros(garm.shape[0], dtype=np.int64)
            gst[g] = np.unique(strata, return_inverse=True)[1]
        shrink = _theta_shrinkage(fx, den, arm, g) if theta else None
        fy, fx, gden = np.bincount(g, fy), np.bincount(g, fx), np.bincount(g, den)
        var, df = _cr2(fy - theta * fx, gden, garm, shrink, gst)
        if not np.isfinite(var) and theta:  # one cluster carries θ: no adjustment
            theta, dx = 0.0, 0.0
            var, df = _cr2(fy, gden, garm, None, gst)
    else:
        var, df = n / (n - 2) * float(((fy - theta * fx) ** 2).sum()), float(n - 2)
    effect = (dy - theta * dx) * scale
    se = float(np.sqrt(var)) * scale
    q = float(stdtrit(df, 1 - alpha / 2))
    p = float(2 * stdtr(df, -abs(effect / se))) if se > 0 else float("nan")
    return Estimate(
        estimator, effect, se, effect - q * se, effect + q * se, p, *rates, units, df,
        extra={"cuped_theta": theta} if xn is not None else {},
    )  # fmt: skip


def _theta_shrinkage(fx: np.ndarray, den: np.ndarray, arm: np.ndarray, g: np.ndarray) -> np.ndarray:
    """How much fitting CUPED's θ over the units shrinks each cluster's adjusted influence
    sum, as a share of that sum's variance, under CR2's working model (independent units,
    each unit's influence ``f_y,i`` with variance ∝ w_i = den_i / D_a², D_a its arm's
    impressions; Bell & McCaffrey 2002). With θ̂ = Σ f_y f_x / S, S = Σ f_x², the cluster's
    adjusted sum ψ_g − (θ̂ − θ)·X_g (X_g = Σ_{i∈g} f_x,i) has expected square
    λ_g − 2·X_g·C_g + X_g²·V_θ, where λ_g = Σ_{i∈g} w_i, C_g = Σ_{i∈g} f_x,i w_i / S
    = Cov(ψ_g, θ̂) and V_θ = Σ f_x² w / S² = Var θ̂; the share is (2·X_g·C_g − X_g²·V_θ) / λ_g.
    A covariate constant within clusters gives Σ_{i∈g} f_x,i² / S (θ is then fitted on the
    clusters and takes its full leverage); one whose deviations cancel within each cluster
    (X_g ≈ 0: the member-level relation, as in the simulated marketplace) gives ≈ 0 — θ then
    takes nothing from the cluster sums, and charging it the share of Σ f_x² (the previous
    rule) inflated the A/A variance by ~40%."""
    s = float(fx @ fx)
    d_arm = np.where(arm == 1, den[arm == 1].sum(), den[arm == 0].sum())
    w = den / d_arm**2
    v_theta = float((fx**2 * w).sum()) / s**2
    lam, cov, xg = (np.bincount(g, v) for v in (w, fx * w / s, fx))
    return (2 * xg * cov - xg**2 * v_theta) / np.where(lam > 0, lam, np.nan)


def _cr2(
    psi: np.ndarray,
    gden: np.ndarray,
    garm: np.ndarray,
    extra: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> tuple[float, float]:
    """Cluster-robust variance of a difference of ratios from the clusters' influence sums
    ``psi`` (whole clusters in one arm), with the small-sample corrections few or unequal
    clusters need. CR1 (G/(G − 1), t with G − 1 df) is too optimistic there: the simulated
    marketplace's Louvain clusters are its 12 cities plus a few dozen singletons, so G = 46
    while a dozen clusters carry the information (A/A false positives 0.19, SE/SD 0.75).

    * **CR2** (Bell & McCaffrey 2002): each cluster's squared sum divided by 1 − h_g, its
      leverage h_g = D_g / D_c (its share of its cell's impressions; for this model the
      left eigenvector of the cluster's hat block is the weights, so (I − H_gg)^(-1/2)
      scales the cluster's score by (1 − h_g)^(-1/2)). Unbiased under working independence.
      ``extra``: the further share of each cluster's variance a fitted term takes
      (:func:`_theta_shrinkage`).
    * **Cells.** Without ``strata`` a cell is an arm (the influences sum to zero in each).
      With ``strata`` (clusters randomised completely within strata, :mod:`._strata`) a
      cell is a stratum × arm: each cluster's sum is first centred on its cell's
      impression-weighted mean — the design fixes how many clusters of a stratum each arm
      gets, so differences between strata are not part of the variance, and Neyman's
      heterogeneity term shrinks to the effect differences *within* strata (Imbens & Rubin
      2015, ch. 9). Each cell needs two clusters: a stratum where an arm has fewer (its
      clusters had no impressions) is collapsed with the next one (:func:`_collapse`).
    * **Degrees of freedom**: Bell & McCaffrey's, (Σμ)² / Σμ², μ the eigenvalues of the
      variance estimator's quadratic form under the same working model (Imbens & Kolesár
      2016): per cell diag(λ) − λλ'/Σλ scaled by (1 − h_g)^(-1/2) on both sides,
      λ_g = D_g / D_a² (D_a the arm's impressions; :func:`_bm_df`). G − 2 for equal
      clusters, about the number of big clusters less two when a few dominate; G − 2S with
      S strata of equal clusters."""
    var, mus = 0.0, []
    cells = garm if strata is None else _collapse(strata, garm) * 2 + garm
    for a in (0, 1):
        arm_total = float(gden[garm == a].sum())
        if arm_total <= 0:
            continue
        for c in np.unique(cells[garm == a]):
            m = cells == c
            d = gden[m]
            total = float(d.sum())
            if total <= 0:
                continue
            h = d / total
            resid = psi[m] - h * float(psi[m].sum())
            shrink = h if extra is None else h + extra[m]
            contrib = resid**2 / np.where(shrink < 1, 1 - shrink, np.nan)
            if not np.isfinite(contrib).all():  # one cluster alone in a cell: no estimate
                return float("nan"), float("nan")
            var += float(contrib.sum())
            mus.append(_bm_eigenvalues(d / arm_total**2, h))
    return var, _bm_df(np.concatenate(mus)) if mus else float("nan")


def _collapse(strata: np.ndarray, garm: np.ndarray) -> np.ndarray:
    """Strata merged in their order (the ordered strata of :mod:`._strata` are similar to
    their neighbours) until each group holds two clusters of each arm; a short tail joins
    the last full group (collapsed strata: Hansen, Hurwitz & Madow 1953). A stratum whose
    arms each have two clusters stays as it is."""
    out = np.empty_like(strata)
    group, counts, full = 0, np.zeros(2, dtype=np.int64), -1
    for s in np.unique(strata):
        m = strata == s
        out[m] = group
        counts += np.bincount(garm[m].astype(np.int64), minlength=2)[:2]
        if (counts >= 2).all():
            full, group, counts = group, group + 1, np.zeros(2, dtype=np.int64)
    if counts.any() and full >= 0:
        out[out == group] = full
    return out


def _bm_eigenvalues(lam: np.ndarray, h: np.ndarray) -> np.ndarray:
    """One arm's eigenvalues of the CR2 quadratic form (:func:`_cr2`)."""
    s = 1 / np.sqrt(1 - h)
    block = (np.diag(lam) - np.outer(lam, lam) / lam.sum()) * np.outer(s, s)
    return np.linalg.eigvalsh(block)


def _bm_df(mu: np.ndarray) -> float:
    """Satterthwaite's df of a quadratic form with eigenvalues ``mu``: (Σμ)² / Σμ²."""
    q = float((mu**2).sum())
    return float(mu.sum() ** 2 / q) if q > 0 else float("nan")


# --- sample-ratio mismatch -------------------------------------------------------------------
@dataclass(frozen=True)
class SrmCheck:
    name: str  # e.g. "viewer assignments"
    counts: tuple[int, ...]
    expected: tuple[float, ...]  # shares
    p: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "counts": list(self.counts),
            "expected": list(self.expected),
            "p": self.p,
        }


def srm_check(name: str, counts: Sequence[int], shares: Sequence[float]) -> SrmCheck:
    """χ² goodness of fit of the units per arm to the design's shares."""
    obs = np.asarray(counts, dtype=float)
    exp = np.asarray(shares, dtype=float) / float(np.sum(shares)) * obs.sum()
    if obs.sum() == 0:
        return SrmCheck(name, tuple(int(c) for c in counts), tuple(shares), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # an arm of share 0: nan
        p = float(chdtrc(obs.size - 1, float(((obs - exp) ** 2 / exp).sum())))
    return SrmCheck(name, tuple(int(c) for c in counts), tuple(float(s) for s in shares), p)


def srm_blocks(checks: Sequence[SrmCheck], alpha: float = SRM_ALPHA) -> bool:
    """The readout is blocked when any check is below ``alpha / len(checks)``."""
    return any(c.p < alpha / max(len(checks), 1) for c in checks)
