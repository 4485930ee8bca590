"""Assignment is a pure function of (salt, unit): bucket = SHA-256(salt ‖ unit) mod 10⁴.

Never Python's ``hash()`` (salted per process) — the same member gets the same arm in every
process, on every machine, forever, and the analysis can recompute any unit's arm.

* **Holdout.** ``bucket(holdout_salt, member) < holdout × 10⁴``: the member is in no
  experiment, as a viewer or as a candidate (a long-term baseline).
* **Layers.** ``bucket("layer:" + layer, member)``; each experiment of a layer owns a
  disjoint range of it (``[offset, offset + traffic × 10⁴)``): experiments in one layer are
  mutually exclusive, and layers, hashed with different salts, are orthogonal.
* **Arms.** ``bucket(salt, unit)`` against the arms' cumulative weights, where the unit is
  the design's: the member (``user``, ``item``), the member as viewer and as candidate
  separately (``two_sided``: ``viewer:m`` and ``candidate:m``, so the two sides are
  independent), the member's cluster (``cluster:c``), or the region and period
  (``switchback:region:period``).
* **Strata** (cluster and switchback designs with ``design.strata``): the units of a
  stratum — clusters, or the regions of one period — are split completely between the arms
  (:func:`stratified_arms`; the strata are taken at start, :mod:`._strata`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from ._model import BUCKETS, DesignKind, Experiment

__all__ = [
    "BUCKETS",
    "Assignment",
    "arm_index",
    "arm_indices",
    "bucket",
    "buckets",
    "candidate_arm",
    "in_experiment",
    "is_held_out",
    "period_of",
    "region_of",
    "served_candidate_arm",
    "side_arms",
    "stratified_arms",
    "unit_arm",
    "viewer_assignment",
]


def bucket(salt: str, unit: str) -> int:
    """SHA-256 of ``salt ‖ 0x1f ‖ unit`` as an integer, mod 10⁴."""
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def buckets(salt: str, units: Sequence[str]) -> list[int]:
    """:func:`bucket` of many units (the salt's hash state is computed once)."""
    prefix = hashlib.sha256(f"{salt}\x1f".encode())
    out = []
    for u in units:
        h = prefix.copy()
        h.update(u.encode())
        out.append(int.from_bytes(h.digest()[:8], "big") % BUCKETS)
    return out


def arm_indices(exp: Experiment, units: Sequence[str]) -> np.ndarray:
    """:func:`arm_index` of many units at once (same arms, vectorised)."""
    total = sum(a.weight for a in exp.arms)
    edges, edge = [], 0.0
    for arm in exp.arms:
        edge += arm.weight / total * BUCKETS
        edges.append(edge)
    b = np.asarray(buckets(exp.salt, units), dtype=np.float64)
    return np.minimum(np.searchsorted(np.asarray(edges), b, side="right"), len(exp.arms) - 1)


def arm_index(exp: Experiment, unit: str) -> int:
    """The arm (index into ``exp.arms``) of a randomisation unit."""
    b = bucket(exp.salt, unit)
    total = sum(a.weight for a in exp.arms)
    edge = 0.0
    for i, arm in enumerate(exp.arms):
        edge += arm.weight / total * BUCKETS
        if b < edge:
            return i
    return len(exp.arms) - 1


def _hash64(salt: str, unit: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}\x1f{unit}".encode()).digest()[:8], "big")


def stratified_arms(exp: Experiment, units: Sequence[str], strata: Sequence[int]) -> np.ndarray:
    """The arm of each unit, each stratum split completely by the arms' weights: within a
    stratum the units in the order of SHA-256(salt ‖ unit) (a seeded permutation), and the
    i-th of n gets the arm whose cumulative-weight range holds (i + o) / n,
    o = bucket(salt ‖ the stratum's sorted units) / 10⁴ (systematic sampling). Every arm gets
    its share of every stratum to within one unit, and a unit's marginal probability of an
    arm is exactly that arm's weight."""
    total = sum(a.weight for a in exp.arms)
    edges = np.cumsum([a.weight / total for a in exp.arms])
    members: dict[int, list[int]] = {}
    for i, s in enumerate(strata):
        members.setdefault(int(s), []).append(i)
    out = np.empty(len(units), dtype=np.int64)
    for idx in members.values():
        names = sorted(units[i] for i in idx)
        offset = bucket(exp.salt, "stratum:" + "\x1e".join(names)) / BUCKETS
        ordered = sorted(idx, key=lambda i: (_hash64(exp.salt, units[i]), units[i]))
        for pos, i in enumerate(ordered):
            u = (pos + offset) / len(ordered)
            out[i] = min(int(np.searchsorted(edges, u, side="right")), len(exp.arms) - 1)
    return out


def unit_arm(exp: Experiment, unit: str, stratum: Sequence[str] | None) -> int:
    """A cluster's or region-period's arm: its ``stratum``'s split (the stratum's units,
    this one among them) when it has one, else its own bucket."""
    if not stratum or unit not in stratum:
        return arm_index(exp, unit)
    return int(stratified_arms(exp, stratum, [0] * len(stratum))[list(stratum).index(unit)])


def region_of(user: Mapping[str, Any] | None, field_name: str) -> str | None:
    """The member's switchback region: the field's value; a ``{lat, lon}`` location is
    binned to a 1° grid cell."""
    if not user:
        return None
    value = user.get(field_name)
    if isinstance(value, Mapping) and "lat" in value and "lon" in value:
        # a member's location as the application stored it: coordinates that are not finite
        # numbers are no region ("unknown", as a missing one), as candidate generation takes
        # them for no location (a ValueError/TypeError here failed every request of that
        # member while a switchback experiment ran, and its start and report)
        try:
            lat, lon = float(value["lat"]), float(value["lon"])
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return None
        return f"{round(lat)}:{round(lon)}"
    return None if value is None else str(value)


def is_held_out(member: str, holdout: float, salt: str) -> bool:
    return holdout > 0 and bucket(salt, member) < holdout * BUCKETS


def in_experiment(exp: Experiment, member: str) -> bool:
    """The member falls in the experiment's range of its layer (holdout checked apart)."""
    if exp.offset is None:
        return False
    b = bucket(f"layer:{exp.layer}", member)
    return exp.offset <= b < exp.offset + exp.width


def period_of(exp: Experiment, at: datetime) -> tuple[int, bool]:
    """Switchback: (period index since the start, inside the burn-in). A time before the
    start (an API host whose clock lags the one that started it) is the start: period -1
    was a unit no other host served and no readout counts, its arm a coin of its own."""
    if exp.start is None:
        return 0, False
    minutes = max(0.0, (at - exp.start).total_seconds() / 60.0)
    period = int(minutes // exp.design.period_minutes)
    return period, minutes - period * exp.design.period_minutes < exp.design.burn_in_minutes


@dataclass(frozen=True)
class Assignment:
    """One viewer's place in one experiment (what responses and logs carry)."""

    experiment: str
    design: str
    arm: str
    unit: str
    cluster: str | None = None
    period: int | None = None
    burn_in: bool = False
    stratum: str | None = None  # stratified designs: the stratum's name (its first unit)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "experiment": self.experiment,
            "design": self.design,
            "arm": self.arm,
            "unit": self.unit,
        }
        if self.cluster is not None:
            out["cluster"] = self.cluster
        if self.period is not None:
            out["period"] = self.period
            out["burn_in"] = self.burn_in
        if self.stratum is not None:
            out["stratum"] = self.stratum
        return out


def viewer_assignment(
    exp: Experiment,
    member: str,
    *,
    at: datetime,
    clusters: Mapping[str, str] | None = None,
    region: str | None = None,
    strata: Mapping[str, Sequence[str]] | None = None,
) -> Assignment:
    """The viewer's assignment (the caller has checked holdout and layer range). For
    ``item`` every viewer serves the merged list: the viewer side is not randomised.
    ``strata``: the start's snapshot, each cluster (cluster) or region (switchback) → the
    units of its stratum; a unit it does not know is assigned alone."""
    kind = exp.design.kind
    name = exp.arms
    if kind == DesignKind.user:
        return Assignment(exp.id, kind.value, name[arm_index(exp, member)].name, member)
    if kind == DesignKind.item:  # every viewer's list ranks each candidate by its own arm
        return Assignment(exp.id, kind.value, name[-1].name, f"viewer:{member}")
    if kind == DesignKind.two_sided:
        unit = f"viewer:{member}"
        return Assignment(exp.id, kind.value, name[_side_arm(exp, unit)].name, unit)
    if kind == DesignKind.cluster:
        # a member the snapshot does not know (joined later) is a cluster of its own
        cluster = (clusters or {}).get(member) or f"new:{member}"
        unit = f"cluster:{cluster}"
        group = (strata or {}).get(cluster)
        units = [f"cluster:{c}" for c in group] if group else None
        arm = name[unit_arm(exp, unit, units)].name
        return Assignment(exp.id, kind.value, arm, unit, cluster, stratum=_name(group))
    period, burn = period_of(exp, at)
    unit = f"switchback:{region or 'unknown'}:{period}"
    group = (strata or {}).get(region or "unknown")
    units = [f"switchback:{r}:{period}" for r in group] if group else None
    arm = name[unit_arm(exp, unit, units)].name
    stratum = None if group is None else f"{_name(group)}:{period}"
    return Assignment(exp.id, kind.value, arm, unit, region, period, burn, stratum)


def _name(group: Sequence[str] | None) -> str | None:
    return None if not group else min(group)


def _side_arm(exp: Experiment, unit: str) -> int:
    """Two-sided: candidates split by ``candidate_share``, viewers by ``viewer_share`` when
    the design sets it (else by the arms' weights)."""
    if unit.startswith("candidate:"):
        return int(bucket(exp.salt, unit) < exp.design.candidate_share * BUCKETS)
    if exp.design.viewer_share is not None:
        return int(bucket(exp.salt, unit) < exp.design.viewer_share * BUCKETS)
    return arm_index(exp, unit)


def side_arms(exp: Experiment, members: Sequence[str], side: str) -> np.ndarray:
    """Two-sided and item designs, many members at once: ``side`` is ``"viewer"`` or
    ``"candidate"`` (the same arms as :func:`viewer_assignment` / :func:`candidate_arm`)."""
    units = [f"{side}:{m}" for m in members]
    d = exp.design
    share = d.candidate_share if side == "candidate" else d.viewer_share
    if d.kind == DesignKind.two_sided and share is not None:
        return (np.asarray(buckets(exp.salt, units)) < share * BUCKETS).astype(np.int64)
    return arm_indices(exp, units)


def candidate_arm(exp: Experiment, member: str) -> int:
    """Pair-level designs: 1 when the candidate is treated, 0 otherwise."""
    if exp.design.kind == DesignKind.two_sided:
        return _side_arm(exp, f"candidate:{member}")
    return arm_index(exp, f"candidate:{member}")


def served_candidate_arm(exp: Experiment, member: str, holdout: float, holdout_salt: str) -> int:
    """The arm serving gives ``member`` as a candidate of a pair-level experiment: the
    control (0) when held out or outside the experiment's range, else :func:`candidate_arm`."""
    if is_held_out(member, holdout, holdout_salt) or not in_experiment(exp, member):
        return 0
    return candidate_arm(exp, member)
