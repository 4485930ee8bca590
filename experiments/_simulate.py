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
from ._assign import arm_index, candidate_arm
from ._clusters import louvain_clusters
from ._model import DesignKind, Experiment
from ._readout import Covariates
from .sim import Assignment, Outcomes, Population, Ranker, World

__all__ = ["SimExperiment", "covariates", "pre_period_clusters", "simulate", "to_exposures"]

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


def _matches(out: Outcomes) -> np.ndarray:
    """Per impression: its (reciprocated) like made a new match."""
    made = np.isin(out.imp_pair, out.match_pair) & out.imp_mutual
    return made


def _assignment(
    exp: Experiment, pop: Population, days: int, clusters: np.ndarray | None
) -> tuple[Assignment, dict[str, list[int]], np.ndarray, np.ndarray]:
    """Arrays for the world run, units per arm (SRM), and the viewer/candidate arm columns."""
    kind, ids, k = exp.design.kind, pop.ids, len(exp.arms)
    if k != 2:
        raise ValueError("the simulator runs two-arm experiments")
    cand = None
    if kind == DesignKind.user:
        viewer = np.array([arm_index(exp, m) for m in ids])
        assigned = {"viewer": np.bincount(viewer, minlength=k).tolist()}
    elif kind in (DesignKind.item, DesignKind.two_sided):
        if kind == DesignKind.two_sided:
            viewer = np.array([arm_index(exp, f"viewer:{m}") for m in ids])
        else:  # item: every viewer serves the merged list
            viewer = np.ones(pop.n, dtype=np.int64)
        cand = np.array([candidate_arm(exp, m) for m in ids])
        assigned = {"candidate": np.bincount(cand, minlength=2).tolist()}
        if kind == DesignKind.two_sided:
            assigned["viewer"] = np.bincount(viewer, minlength=k).tolist()
    elif kind == DesignKind.cluster:
        assert clusters is not None
        uniq = np.unique(clusters)
        arm_of = {int(c): arm_index(exp, f"cluster:c{int(c)}") for c in uniq}
        viewer = np.array([arm_of[int(c)] for c in clusters])
        assigned = {"unit": np.bincount(list(arm_of.values()), minlength=k).tolist()}
    else:
        per = _period_days(exp)
        periods = (days + per - 1) // per
        markets = np.unique(pop.market)
        grid = np.array(
            [[arm_index(exp, f"switchback:m{m}:{p}") for m in markets] for p in range(periods)]
        )
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
) -> Exposures:
    pop = world.pop
    v = pop.pair_viewer[out.imp_pair]
    c = pop.pair_candidate[out.imp_pair]
    day = out.imp_day - out.first_day
    kind = exp.design.kind
    varm = viewer_arm[day, v] if viewer_arm.ndim == 2 else viewer_arm[v]
    region = period = burn = None
    if kind == DesignKind.switchback:
        per = _period_days(exp)
        burn_days = exp.design.burn_in_minutes / 1440
        region, period = pop.market[v], day // per
        burn = (day - period * per) < burn_days
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
    )


def simulate(
    exp: Experiment,
    world: World,
    treatment: Ranker,
    seed: int,
    clusters: np.ndarray | None = None,
) -> SimExperiment:
    """One replication of ``exp`` in ``world`` (``seed``: the run's random numbers)."""
    exp = exp if exp.start is not None else exp.model_copy(update={"start": _EPOCH})
    a, assigned, varm, carm = _assignment(exp, world.pop, world.market.days, clusters)
    out = world.run(treatment, a, seed)
    return SimExperiment(to_exposures(exp, world, out, varm, carm, clusters), assigned, out)
