"""A readout: every pre-registered metric by the design's estimator, and the SRM gate.

:func:`analyze` takes the experiment's impression rows (:class:`~._analysis.Exposures`, from
the served logs or from the simulator), aggregates them to the design's randomisation unit
and applies its estimator (:mod:`._analysis`):

============  ===============================  ======================================
design        unit of analysis                 estimator (SE)
============  ===============================  ======================================
user          viewer                           ratio difference + CUPED (HC1)
item          candidate                        ratio difference + CUPED (HC1)
two_sided     viewer × candidate cells         TSRI-k(β) (two-way bootstrap)
cluster       viewer, clustered by cluster     ratio difference + CUPED (CR2, t(BM df))
switchback    (region, period), burn-in        ratio difference, region and period fixed
              dropped                          effects (HC2: units assigned apart);
                                               one period: viewer, regions as clusters
                                               (as cluster)
============  ===============================  ======================================

The SRM checks (assignments and exposures, viewer and candidate side) come first; when one
fails the readout is ``blocked`` and its estimates must not be read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from opendisco._exceptions import InvalidInput

from ._analysis import (
    Estimate,
    Exposures,
    SrmCheck,
    aggregate,
    ratio_difference,
    srm_blocks,
    srm_check,
)
from ._metrics import METRICS
from ._model import Design, DesignKind
from ._twosided import tsri

__all__ = ["Covariates", "Readout", "analyze", "arm_shares", "without_interval"]


@dataclass(frozen=True)
class Covariates:
    """Pre-period sums per member code (index = the code used in the rows): outcome columns
    and ``impressions``, as viewer and as candidate."""

    viewer: Mapping[str, np.ndarray]
    candidate: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Readout:
    design: str
    arms: list[str]
    estimates: list[tuple[str, str, Estimate]]  # (metric, treatment arm, estimate)
    srm: list[SrmCheck]
    blocked: bool
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def estimate(self, metric: str, arm: str | None = None) -> Estimate:
        for m, a, e in self.estimates:
            if m == metric and (arm is None or a == arm):
                return e
        raise KeyError((metric, arm))

    def to_dict(self) -> dict[str, Any]:
        return {
            "design": self.design,
            "arms": self.arms,
            "blocked": self.blocked,
            "srm": [c.to_dict() for c in self.srm],
            "estimates": [{"metric": m, "arm": a, **e.to_dict()} for m, a, e in self.estimates],
            "diagnostics": self.diagnostics,
        }


def arm_shares(design: Design, weights: Sequence[float], side: str = "viewer") -> list[float]:
    """The shares the design assigns (two-sided: ``candidate_share``, ``viewer_share``)."""
    if design.kind == DesignKind.two_sided and side == "candidate":
        return [1 - design.candidate_share, design.candidate_share]
    if design.kind == DesignKind.two_sided and design.viewer_share is not None:
        return [1 - design.viewer_share, design.viewer_share]
    total = float(sum(weights))
    return [w / total for w in weights]


def _pre_period(
    cov: Mapping[str, np.ndarray], column: str, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The units' pre-period numerators and impressions (CUPED's covariate)."""
    return cov[column][codes], cov["impressions"][codes]


def _unique_arm(keys: np.ndarray, arms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, idx = np.unique(keys, return_index=True)
    return uniq, arms[idx]


def analyze(
    design: Design,
    arms: Sequence[str],
    weights: Sequence[float],
    rows: Exposures,
    *,
    metrics: Sequence[str],
    assigned: Mapping[str, Sequence[int]] | None = None,
    covariates: Covariates | None = None,
    cuped: bool = True,
    bootstrap: int = 200,
    seed: int = 0,
) -> Readout:
    """Estimates of every ``metrics`` for each treatment arm against ``arms[0]``.
    ``assigned``: units per arm in the population (``viewer``/``candidate``), for SRM.
    An estimate without a readable interval has none and says why (``note``:
    :func:`without_interval`); outcomes or weights that are not finite numbers
    are refused (:class:`InvalidInput`; they gave a NaN readout without a word)."""
    kind = design.kind
    columns = {"weights": rows.weight}
    columns |= {METRICS[m].numerator: rows.outcomes[METRICS[m].numerator] for m in metrics}
    bad = [c for c, v in columns.items() if not np.isfinite(v).all()]
    if bad:
        raise InvalidInput(f"outcomes that are not finite numbers: {', '.join(sorted(bad))}")
    checks = _srm(design, weights, rows, assigned or {})
    if kind == DesignKind.switchback and rows.burn_in is not None:
        rows = rows.subset(~rows.burn_in)
    out: list[tuple[str, str, Estimate]] = []
    w = rows.weight
    for name in metrics:
        metric = METRICS[name]
        y = rows.outcomes[metric.numerator]
        for t in range(1, len(arms)):
            est = _estimate(
                design,
                rows,
                y,
                w,
                t,
                metric.numerator,
                metric.scale,
                covariates,
                cuped,
                bootstrap,
                seed,
            )
            out.append((name, arms[t], without_interval(est)))
    diag: dict[str, Any] = {"rows": int(rows.viewer.shape[0])}
    if kind == DesignKind.cluster and rows.cluster is not None:
        diag["clusters"] = int(np.unique(rows.cluster).shape[0])
    return Readout(kind.value, list(arms), out, checks, srm_blocks(checks), diag)


def without_interval(e: Estimate) -> Estimate:
    """``e``, or — when its interval cannot be read — ``e`` without one (SE, interval and p
    NaN, which the report writes as null) and a ``note`` saying why:

    * an arm without an exposed unit (no contrast);
    * no standard error (NaN or infinite: one cluster or region in an arm, no residual
      degree of freedom, a two-sided cell empty in the bootstrap's draws);
    * a standard error of 0 to rounding (the outcome does not vary within the arms: all
      zero, or every unit of an arm alike): not a certainty — too little data to see the
      variance. Before, [0, 0] or [1000, 1000] with p = 1e-279 from ten viewers an arm."""
    rates = np.abs([e.control, e.treatment])
    scale = float(rates.max()) if np.isfinite(rates).all() else 0.0
    if min(e.units) == 0:
        note = "no exposed unit in an arm: no contrast"
    elif not np.isfinite(e.se):
        note = "no standard error: too few units (clusters, regions) in an arm"
    elif e.se <= 1e-9 * scale or e.se == 0:
        note = "the outcome does not vary within the arms: no interval"
    else:
        return e
    nan = float("nan")
    return replace(e, se=nan, ci_low=nan, ci_high=nan, p=nan, note=note)


def _estimate(
    design: Design,
    rows: Exposures,
    y: np.ndarray,
    w: np.ndarray,
    t: int,
    column: str,
    scale: float,
    cov: Covariates | None,
    cuped: bool,
    bootstrap: int,
    seed: int,
) -> Estimate:
    kind = design.kind
    if kind == DesignKind.two_sided:
        return tsri(
            rows.viewer,
            rows.candidate,
            rows.viewer_arm,
            rows.candidate_arm,
            y,
            w,
            beta=design.tsri_beta,
            k=design.tsri_k,
            scale=scale,
            bootstrap=bootstrap,
            seed=seed,
        )
    per = 1  # keys are member codes times this (plus a region: one-period switchback)
    if kind == DesignKind.item:
        keys, arm_col, side = rows.candidate, rows.candidate_arm, "candidate"
    elif kind == DesignKind.switchback and _one_period(rows):
        # one period covers the run (the carry-over is as long as the run): each region
        # keeps one arm throughout — a region-randomised design, read by viewer with the
        # regions as clusters (CR2, CUPED as for the cluster design). A viewer who moved
        # between regions is a unit in each (its rows took each region's arm): as one unit
        # it took its first row's arm and region, its rows under the other arm counted in
        # it (a third of the viewers moving half-way read 67 of a true effect of 100)
        assert rows.region is not None
        per = int(rows.region.max(initial=0)) + 1
        keys, arm_col, side = (
            rows.viewer.astype(np.int64) * per + rows.region,
            rows.viewer_arm,
            "viewer",
        )
    elif kind == DesignKind.switchback:
        keys = _unit_keys(kind, rows)
        assert keys is not None
        arm_col, side = rows.viewer_arm, None
    else:
        keys, arm_col, side = rows.viewer, rows.viewer_arm, "viewer"
    sel = (arm_col == 0) | (arm_col == t)
    keys, arm_col, y, w = keys[sel], arm_col[sel], y[sel], w[sel]
    uniq, num, den = aggregate(keys, y, w)
    _, unit_arm = _unique_arm(keys, arm_col)
    arm01 = (unit_arm == t).astype(float)
    groups = fixed = covariate = strata = None
    estimator = "difference"
    if kind == DesignKind.cluster and rows.cluster is not None:
        _, groups = _unique_arm(keys, rows.cluster[sel])
        estimator = "difference, cluster-robust"
    if kind == DesignKind.switchback and side is not None:
        assert rows.region is not None
        _, groups = _unique_arm(keys, rows.region[sel])
        estimator = "difference, one period, region-robust"
    elif kind == DesignKind.switchback:
        # the (region, period) units are assigned independently: unit-level HC2 with region
        # and period fixed effects (clustering by region, wider than the assignment, is
        # conservative: Abadie, Athey, Imbens & Wooldridge 2023); randomised within strata
        # of regions in each period: the strata's fixed effects (they nest in the periods)
        fixed = [uniq // 1_000_000, uniq % 1_000_000]
        if rows.stratum is not None:
            fixed[1] = _unique_arm(keys, rows.stratum[sel])[1]
        estimator = "difference, region and period FE (HC2)"
    if groups is not None and rows.stratum is not None:
        _, strata = _unique_arm(keys, rows.stratum[sel])
        estimator += ", stratified"
    if cuped and cov is not None and side is not None:
        covariate = _pre_period(getattr(cov, side), column, uniq // per)
        estimator += " + CUPED"
    return ratio_difference(
        num,
        den,
        arm01,
        scale=scale,
        groups=groups,
        covariate=covariate,
        fixed=fixed,
        strata=strata,
        estimator=estimator,
    )


def _one_period(rows: Exposures) -> bool:
    """Switchback rows (burn-in dropped) with a single period: no region ever switched."""
    return (
        rows.region is not None
        and rows.period is not None
        and (np.unique(rows.period).shape[0] <= 1)
    )


def _unit_keys(kind: DesignKind, rows: Exposures) -> np.ndarray | None:
    if kind == DesignKind.cluster:
        return rows.cluster
    if kind == DesignKind.switchback and rows.region is not None and rows.period is not None:
        return rows.region.astype(np.int64) * 1_000_000 + rows.period
    return None


def _srm(
    design: Design, weights: Sequence[float], rows: Exposures, assigned: Mapping[str, Sequence[int]]
) -> list[SrmCheck]:
    """Assignments (given) and exposures (distinct units in the rows), both sides."""
    kind = design.kind
    k = len(weights)
    checks = []
    vshares = arm_shares(design, weights, "viewer")
    cshares = arm_shares(design, weights, "candidate")
    if "viewer" in assigned and kind != DesignKind.item:
        checks.append(srm_check("viewer assignments", assigned["viewer"], vshares))
    if "candidate" in assigned and kind in (DesignKind.item, DesignKind.two_sided):
        checks.append(srm_check("candidate assignments", assigned["candidate"], cshares))
    if kind in (DesignKind.user, DesignKind.two_sided):
        _, va = _unique_arm(rows.viewer, rows.viewer_arm)
        checks.append(srm_check("viewer exposures", np.bincount(va, minlength=k), vshares))
    if kind in (DesignKind.cluster, DesignKind.switchback):
        if "unit" in assigned:
            checks.append(srm_check("unit assignments", assigned["unit"], vshares))
        units = _unit_keys(kind, rows)
        if units is not None:
            _, ua = _unique_arm(units, rows.viewer_arm)
            checks.append(srm_check("unit exposures", np.bincount(ua, minlength=k), vshares))
    if kind == DesignKind.two_sided:
        # candidates shown in control viewers' lists, where no treatment moves them
        ctl = rows.viewer_arm == 0
        _, ca = _unique_arm(rows.candidate[ctl], rows.candidate_arm[ctl])
        checks.append(srm_check("candidate exposures", np.bincount(ca, minlength=2), cshares))
    return checks
