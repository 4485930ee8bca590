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
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ._model import DesignKind, Experiment

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
    "side_arms",
    "viewer_assignment",
]

BUCKETS = 10_000


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


def is_held_out(member: str, holdout: float, salt: str) -> bool:
    return holdout > 0 and bucket(salt, member) < holdout * BUCKETS


def in_experiment(exp: Experiment, member: str) -> bool:
    """The member falls in the experiment's range of its layer (holdout checked apart)."""
    if exp.offset is None:
        return False
    b = bucket(f"layer:{exp.layer}", member)
    return exp.offset <= b < exp.offset + exp.width


def period_of(exp: Experiment, at: datetime) -> tuple[int, bool]:
    """Switchback: (period index since the start, inside the burn-in)."""
    if exp.start is None:
        return 0, False
    minutes = (at - exp.start).total_seconds() / 60.0
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
        return out


def viewer_assignment(
    exp: Experiment,
    member: str,
    *,
    at: datetime,
    clusters: Mapping[str, str] | None = None,
    region: str | None = None,
) -> Assignment:
    """The viewer's assignment (the caller has checked holdout and layer range). For
    ``item`` every viewer serves the merged list: the viewer side is not randomised."""
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
        return Assignment(exp.id, kind.value, name[arm_index(exp, unit)].name, unit, cluster)
    period, burn = period_of(exp, at)
    unit = f"switchback:{region or 'unknown'}:{period}"
    return Assignment(
        exp.id, kind.value, name[arm_index(exp, unit)].name, unit, region, period, burn
    )


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
