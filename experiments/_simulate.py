"""An experiment in the simulator: the served assignment functions on simulated members.

:func:`simulate` assigns the world's members exactly as serving does (:mod:`._assign`: the
SHA-256 buckets of the member ids under the experiment's salt, clusters from
:func:`~._clusters.louvain_clusters` of the pre-period graph, markets as switchback
regions and days as time), runs the world and returns the impression rows the analysis
reads, the units assigned per arm (SRM) and the pre-period covariates (CUPED). The bench
(``bench/experiments.py``) and the tests measure the designs with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from ._analysis import Exposures
from ._assign import arm_index, arm_indices, side_arms
from ._balance import market_balance
from ._clusters import louvain_clusters
from ._metrics import METRICS
from ._model import DesignKind, Experiment
from ._readout import Covariates
from ._strata import strata_of, stratified_arms
from .sim import Assignment, Outcomes, Population, Ranker, World
from .sim._market import EXPIRED

__all__ = [
    "SimExperiment",
    "carry_over_days",
    "covariates",
    "pre_period_balance",
    "pre_period_clusters",
    "pre_period_strata",
    "simulate",
    "to_exposures",
]

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimExperiment:
    rows: Exposures
    assigned: dict[str, list[int]]
    outcomes: Outcomes


def pre_period_clusters(world: World, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Cluster code per member from the pre-period's likes (1) and mutual likes (+1)."""
    pop, pre = world.pop, world.pre
    liked = pre.imp_pair[pre.imp_liked]
    mutual = pre.imp_pair[pre.imp_mutual]
    ids = pop.ids
    edges = [(ids[pop.pair_viewer[p]], ids[pop.pair_candidate[p]], 1.0) for p in liked.tolist()]
    edges += [(ids[pop.pair_viewer[p]], ids[pop.pair_candidate[p]], 1.0) for p in mutual.tolist()]
    labels = louvain_clusters(ids, edges, resolution=resolution, seed=seed)
    names = {c: i for i, c in enumerate(sorted(set(labels.values())))}
    return np.array([names[labels[m]] for m in ids], dtype=np.int64)


def pre_period_balance(world: World) -> float:
    """:func:`~._balance.market_balance` of the pre-period: a like is capacity-bound when it
    expired although its receiver was active on a day it waited (sent or expiry day)."""
    pop, pre = world.pop, world.pre
    if not pre.prop_imp.size:
        return 0.0
    receiver = pop.pair_candidate[pre.imp_pair[pre.prop_imp]]
    days = pre.active.shape[0]
    sent = pre.imp_day[pre.prop_imp] - pre.first_day
    resolved = np.clip(pre.prop_resolved - pre.first_day, 0, days - 1)
    waited_active = pre.active[sent, receiver] | pre.active[resolved, receiver]
    return market_balance(receiver, (pre.prop_status == EXPIRED) & waited_active)


def carry_over_days(world: World, q: float = 0.9) -> int:
    """The market's memory, measured on the pre-period (never on an experiment's outcomes):
    how many days back what a viewer is shown depends on what they were shown before. A
    viewer's list skips the candidates already seen (and liked) — the ranker's top is
    consumed — so an impression on day d depends on every earlier day whose impressions are
    still remembered; its lag is d minus the first of those days (for a market whose seen
    memory never expires: d minus the viewer's first day in the pre-period). Returns the
    ``q`` quantile of the lags of the pre-period's last day — a lower bound when it equals
    the pre-period (the memory is at least as long as what could be observed). A switchback
    needs periods longer than this, and its burn-in at least this long."""
    pre, pop = world.pre, world.pop
    if not pre.imp_pair.size or world.market.slots is None:
        return 0  # independent exposure: what is shown does not depend on what was
    viewer = pop.pair_viewer[pre.imp_pair]
    day = pre.imp_day - pre.first_day
    last = day == day.max()
    memory = np.inf if world.market.seen_days is None else world.market.seen_days
    remembered = pre.imp_liked | (day.max() - day < memory)
    first = np.full(pop.n, np.iinfo(np.int64).max)
    np.minimum.at(first, viewer[remembered], day[remembered])
    lag = day[last] - np.minimum(first[viewer[last]], day[last])
    return int(np.ceil(np.quantile(lag, q)))


def covariates(world: World) -> Covariates:
    """Pre-period sums per member, as viewer and as candidate."""
    pop, pre = world.pop, world.pre
    v = pop.pair_viewer[pre.imp_pair]
    c = pop.pair_candidate[pre.imp_pair]
    cols = {"likes": pre.imp_liked, "mutual": pre.imp_mutual, "matches": _matches(pre)}

    def side(who: np.ndarray) -> dict[str, np.ndarray]:
        out = {
            k: np.bincount(who, weights=x.astype(float), minlength=pop.n) for k, x in cols.items()
        }
        out["impressions"] = np.bincount(who, minlength=pop.n).astype(float)
        return out

    return Covariates(side(v), side(c))


def pre_period_strata(
    exp: Experiment, world: World, unit_of: np.ndarray, cov: Covariates | None = None
) -> np.ndarray:
    """Stratum of each unit code in ``unit_of`` (per member: its cluster or market) from the
    pre-period: the units' viewer impressions (size) and the experiment's primary metric's
    numerator per impression (rate), :func:`~._strata.strata_of` of ``exp.design.strata``."""
    cov = cov or covariates(world)
    column = METRICS[exp.metrics[0]].numerator
    n_units = int(unit_of.max()) + 1
    size = np.bincount(unit_of, cov.viewer["impressions"], n_units)
    num = np.bincount(unit_of, cov.viewer[column], n_units)
    rate = np.divide(num, size, out=np.zeros(n_units), where=size > 0)
    return strata_of([str(u) for u in range(n_units)], size, rate, exp.design.strata)


def _matches(out: Outcomes) -> np.ndarray:
    """Per impression: its (reciprocated) like made a new match."""
    made = np.isin(out.imp_pair, out.match_pair) & out.imp_mutual
    return made


def _assignment(
    exp: Experiment,
    pop: Population,
    days: int,
    clusters: np.ndarray | None,
    strata: np.ndarray | None = None,
) -> tuple[Assignment, dict[str, list[int]], np.ndarray, np.ndarray]:
    """Arrays for the world run, units per arm (SRM), and the viewer/candidate arm columns.
    ``strata``: per cluster code (cluster) or market (switchback), when the design has
    them."""
    kind, ids, k = exp.design.kind, pop.ids, len(exp.arms)
    if k != 2:
        raise ValueError("the simulator runs two-arm experiments")
    cand = None
    if kind == DesignKind.user:
        viewer = arm_indices(exp, ids)
        assigned = {"viewer": np.bincount(viewer, minlength=k).tolist()}
    elif kind in (DesignKind.item, DesignKind.two_sided):
        if kind == DesignKind.two_sided:
            viewer = side_arms(exp, ids, "viewer")
        else:  # item: every viewer serves the merged list
            viewer = np.ones(pop.n, dtype=np.int64)
        cand = side_arms(exp, ids, "candidate")
        assigned = {"candidate": np.bincount(cand, minlength=2).tolist()}
        if kind == DesignKind.two_sided:
            assigned["viewer"] = np.bincount(viewer, minlength=k).tolist()
    elif kind == DesignKind.cluster:
        assert clusters is not None
        uniq = np.unique(clusters)
        if strata is not None:
            arms = stratified_arms(exp, [f"cluster:c{int(c)}" for c in uniq], strata[uniq])
            arm_of = dict(zip(uniq.tolist(), arms.tolist(), strict=True))
        else:
            arm_of = {int(c): arm_index(exp, f"cluster:c{int(c)}") for c in uniq}
        viewer = np.array([arm_of[int(c)] for c in clusters])
        assigned = {"unit": np.bincount(list(arm_of.values()), minlength=k).tolist()}
    else:
        per = _period_days(exp)
        periods = (days + per - 1) // per
        markets = np.unique(pop.market)
        units = [f"switchback:m{m}:{p}" for p in range(periods) for m in markets]
        if strata is not None:  # the markets' strata, in every period
            cells = [
                p * (int(strata.max()) + 1) + int(strata[m])
                for p in range(periods)
                for m in markets
            ]
            grid = stratified_arms(exp, units, cells).reshape(periods, markets.shape[0])
        else:
            grid = arm_indices(exp, units).reshape(periods, markets.shape[0])
        viewer = np.repeat(grid, per, axis=0)[:days][:, pop.market]
        assigned = {"unit": np.bincount(grid.ravel(), minlength=k).tolist()}
    a = Assignment(viewer.astype(bool), None if cand is None else cand.astype(bool))
    return a, assigned, viewer, np.zeros(pop.n, np.int64) if cand is None else cand


def _period_days(exp: Experiment) -> int:
    return max(1, round(exp.design.period_minutes / 1440))


def to_exposures(
    exp: Experiment,
    world: World,
    out: Outcomes,
    viewer_arm: np.ndarray,
    candidate_arm: np.ndarray,
    clusters: np.ndarray | None,
    strata: np.ndarray | None = None,
) -> Exposures:
    pop = world.pop
    v = pop.pair_viewer[out.imp_pair]
    c = pop.pair_candidate[out.imp_pair]
    day = out.imp_day - out.first_day
    kind = exp.design.kind
    varm = viewer_arm[day, v] if viewer_arm.ndim == 2 else viewer_arm[v]
    region = period = burn = stratum = None
    if kind == DesignKind.switchback:
        per = _period_days(exp)
        burn_days = exp.design.burn_in_minutes / 1440
        region, period = pop.market[v], day // per
        burn = (day - period * per) < burn_days
        if strata is not None:
            stratum = period * (int(strata.max()) + 1) + strata[region]
    elif kind == DesignKind.cluster and strata is not None and clusters is not None:
        stratum = strata[clusters[v]]
    outcomes = {
        "likes": out.imp_liked.astype(float),
        "mutual": out.imp_mutual.astype(float),
        "matches": _matches(out).astype(float),
    }
    return Exposures(
        v,
        c,
        varm.astype(np.int64),
        candidate_arm[c].astype(np.int64),
        outcomes,
        None if clusters is None else clusters[v],
        region,
        period,
        burn,
        stratum=stratum,
    )


def simulate(
    exp: Experiment,
    world: World,
    treatment: Ranker,
    seed: int,
    clusters: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> SimExperiment:
    """One replication of ``exp`` in ``world`` (``seed``: the run's random numbers).
    ``strata``: :func:`pre_period_strata` of the clusters (cluster) or markets (switchback),
    computed here when the design asks for strata and none are given."""
    exp = exp if exp.start is not None else exp.model_copy(update={"start": _EPOCH})
    if strata is None and exp.design.strata:
        if exp.design.kind == DesignKind.cluster and clusters is not None:
            strata = pre_period_strata(exp, world, clusters)
        elif exp.design.kind == DesignKind.switchback:
            strata = pre_period_strata(exp, world, world.pop.market.astype(np.int64))
    a, assigned, varm, carm = _assignment(exp, world.pop, world.market.days, clusters, strata)
    out = world.run(treatment, a, seed)
    rows = to_exposures(exp, world, out, varm, carm, clusters, strata)
    return SimExperiment(rows, assigned, out)
