"""``opendisco experiments report``: served logs + events → both-sided outcomes → readout.

:func:`collect` turns what serving wrote into the analysis' impression rows: every shown item
of every ``experiment_exposures`` document of the experiment is a row (viewer, the item's
owner as the candidate, arms, cluster/region/period/burn-in); its outcomes come from the
events: ``likes`` (the viewer liked the item after it was shown), ``mutual`` (and the
candidate liked the viewer, ``user_likes``), ``matches`` (the pair matched after it was
shown, ``user_matches``). Units assigned per arm (for SRM) are recomputed from the members
with the same pure functions serving used. :func:`both_sides` sums the outcomes per arm as
seen (viewers) and as received (candidates: impressions, likes and matches received).
:func:`~._render.write_report` prints nothing; it writes ``report.json``, ``report.html`` and
``effects.png`` and stores the readout in ``experiment_reports``. The pre-period covariate
of CUPED comes from the served-list log (``served_lists``) and the like events of the 14
days before the start (none: no CUPED).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from opendisco._backend import backend_errors
from opendisco._domain import USERS_COLLECTION
from opendisco._exceptions import InvalidInput
from opendisco.signals import SERVED_LISTS, USER_LIKES, USER_MATCHES

from ._analysis import Exposures
from ._assign import (
    arm_index,
    candidate_arm,
    in_experiment,
    is_held_out,
    period_of,
    region_of,
    served_candidate_arm,
    unit_arm,
)
from ._log import EXPOSURES, exposure_record
from ._model import PAIR_LEVEL, DesignKind, Experiment
from ._readout import Covariates
from ._render import REPORTS, write_report
from ._store import ExperimentStore

__all__ = ["REPORTS", "Collected", "both_sides", "collect", "write_report"]

log = logging.getLogger("opendisco.experiments")
_SEP = "\x1f"


def _utc(t: Any) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


class Collected:
    """Rows for the analysis, the units assigned per arm, the members (index = the code in
    the rows) and their pre-period covariates (CUPED; None without a pre-period log)."""

    def __init__(
        self,
        rows: Exposures,
        assigned: dict[str, list[int]],
        members: list[str],
        covariates: Covariates | None = None,
        foreign: int = 0,
    ) -> None:
        self.rows = rows
        self.assigned = assigned
        self.members = members
        self.covariates = covariates
        #: shown items logged under an arm the experiment does not have (left out)
        self.foreign = foreign


async def collect(
    db: Any,
    exp: Experiment,
    *,
    holdout: float,
    holdout_salt: str,
    end: datetime | None = None,
    pre_days: int = 14,
) -> Collected:
    start = _utc(exp.start)
    if start is None:  # a draft (a traceback before: ValueError)
        raise InvalidInput(f"experiment {exp.id!r} is {exp.status.value}: it never started")
    end = end or _utc(exp.stop) or datetime.now(UTC)
    with backend_errors("reading experiment exposures failed"):
        docs = await db[EXPOSURES].find({"at": {"$gte": start}}).to_list(None)
    arms = [a.name for a in exp.arms]
    code: dict[str, int] = {}
    cols: dict[str, list[Any]] = defaultdict(list)
    shown: list[tuple[str, str, str, datetime]] = []  # viewer, item, candidate member, at
    foreign = 0  # shown items logged under an arm the experiment does not have
    for doc in docs:
        rec = exposure_record(doc, exp.id)
        if rec is None:
            continue
        at = _utc(doc["at"])
        if at is None or at > end:
            continue
        viewer = str(doc["viewer"])
        if rec["arm"] not in arms:  # an arm the experiment no longer has (its document edited)
            foreign += len(doc["items"])
            continue
        varm = arms.index(rec["arm"])
        cand_arms = rec.get("candidates") or {}
        for item in doc["items"]:
            member = str(item.get("owner") or item["id"])
            carm = cand_arms.get(item["id"])
            if carm is None and exp.pair_level:
                # not recorded (a list logged while the process's registry no longer held the
                # experiment): the arm serving gives the member, as the log would have named it
                # (left -1, it failed the readout's SRM check with a ValueError)
                carm = arms[served_candidate_arm(exp, member, holdout, holdout_salt)]
            if carm is not None and carm not in arms:
                foreign += 1
                continue
            cols["viewer"].append(code.setdefault(viewer, len(code)))
            cols["candidate"].append(code.setdefault(member, len(code)))
            cols["viewer_arm"].append(varm)
            cols["candidate_arm"].append(arms.index(carm) if carm is not None else -1)
            cols["cluster"].append(rec.get("cluster") or "")
            cols["region"].append(str(rec.get("unit", "")).rsplit(":", 1)[0])
            cols["period"].append(int(rec.get("period") or 0))
            cols["burn_in"].append(bool(rec.get("burn_in", False)))
            cols["stratum"].append(rec.get("stratum") or "")
            shown.append((viewer, str(item["id"]), member, at))
    if foreign:
        # dropped, not read as arm -1: the SRM check's bincount failed the report with a
        # ValueError traceback
        log.warning("experiment %s: %d shown items under arms it does not have", exp.id, foreign)
    likes, mutual, matches = await _outcomes(db, shown, start, end)
    members = sorted(code, key=code.__getitem__)

    def codes(values: list[Any]) -> np.ndarray:
        table: dict[Any, int] = {}
        return np.array([table.setdefault(v, len(table)) for v in values], dtype=np.int64)

    rows = Exposures(
        viewer=np.array(cols["viewer"], dtype=np.int64),
        candidate=np.array(cols["candidate"], dtype=np.int64),
        viewer_arm=np.array(cols["viewer_arm"], dtype=np.int64),
        candidate_arm=np.array(cols["candidate_arm"], dtype=np.int64),
        outcomes={"likes": likes, "mutual": mutual, "matches": matches},
        cluster=codes(cols["cluster"]),
        region=codes(cols["region"]),
        period=np.array(cols["period"], dtype=np.int64),
        burn_in=np.array(cols["burn_in"], dtype=bool),
        stratum=codes(cols["stratum"]) if exp.design.strata else None,
    )
    assigned = await _assigned(db, exp, holdout, holdout_salt, start, end)
    covariates = await _pre_period(db, code, start, pre_days)
    return Collected(rows, assigned, members, covariates, foreign)


async def _pre_period(
    db: Any, code: dict[str, int], start: datetime, days: int, items: str = "items"
) -> Covariates | None:
    """Per member (as viewer and as candidate), the ``days`` before the start from the
    served-list log (``served_lists``: what every answer showed) and the like events:
    impressions, likes, mutual likes."""
    since = start - timedelta(days=days)
    with backend_errors("reading the pre-period served lists failed"):
        docs = (
            await db[SERVED_LISTS]
            .find(
                {"at": {"$gte": since, "$lt": start}},
                {"user_id": 1, "ids": 1, "shown": 1, "at": 1},
            )
            .to_list(None)
        )
    shown = [
        (str(d["user_id"]), str(d["ids"][r]), at)
        for d in docs
        if d.get("user_id") and (at := _utc(d.get("at"))) is not None
        for r in d.get("shown") or []
        if 0 <= r < len(d.get("ids") or [])
    ]
    if not shown:
        return None
    ids = sorted({i for _, i, _ in shown})
    with backend_errors("reading item owners failed"):
        owners = {
            str(d["_id"]): str(d.get("owner_id") or d["_id"])
            for k in range(0, len(ids), 500)
            for d in await db[items]
            .find({"_id": {"$in": ids[k : k + 500]}}, {"owner_id": 1})
            .to_list(None)
        }
    rows = [(v, i, owners.get(i, i), at) for v, i, at in shown]
    likes, mutual, _ = await _outcomes(db, rows, since, start)
    n = len(code)
    viewer: dict[str, np.ndarray] = {
        k: np.zeros(n) for k in ("impressions", "likes", "mutual", "matches")
    }
    candidate = {k: np.zeros(n) for k in viewer}
    for (v, _, member, _), lk, mu in zip(rows, likes, mutual, strict=True):
        for side, who in ((viewer, v), (candidate, member)):
            c = code.get(who)
            if c is not None:
                side["impressions"][c] += 1
                side["likes"][c] += lk
                side["mutual"][c] += mu
    return Covariates(viewer, candidate)


async def _outcomes(
    db: Any, shown: list[tuple[str, str, str, datetime]], start: datetime, end: datetime
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with backend_errors("reading events failed"):
        events = (
            await db["events"]
            .find({"type": "like", "ts": {"$gte": start}}, {"user_id": 1, "item_id": 1, "ts": 1})
            .to_list(None)
        )
        likes_docs = await db[USER_LIKES].find({}, {"src": 1, "dst": 1, "at": 1}).to_list(None)
        match_docs = await db[USER_MATCHES].find({}, {"users": 1, "at": 1}).to_list(None)
    first_like: dict[tuple[str, str], datetime] = {}
    for e in events:
        ts = _utc(e["ts"])
        key = (str(e["user_id"]), str(e["item_id"]))
        if ts is not None and ts <= end and (key not in first_like or ts < first_like[key]):
            first_like[key] = ts
    # a like back recorded after the end (the stop) is not the experiment's outcome, as a
    # match after it is not (it counted: the readout of a stopped experiment grew with the
    # likes that arrived after its stop, while their matches did not)
    liked_members = {
        (str(d["src"]), str(d["dst"]))
        for d in likes_docs
        if (at := _utc(d.get("at"))) is None or at <= end
    }
    matched = {tuple(sorted(d["users"])): _utc(d.get("at")) for d in match_docs}
    n = len(shown)
    likes, mutual, matches = np.zeros(n), np.zeros(n), np.zeros(n)
    for i, (viewer, item, member, at) in enumerate(shown):
        ts = first_like.get((viewer, item))
        if ts is None or ts < at:
            continue
        likes[i] = 1.0
        if (member, viewer) in liked_members:
            mutual[i] = 1.0
            m_at = matched.get(tuple(sorted((viewer, member))))
            matches[i] = float(m_at is not None and at <= m_at <= end)
    return likes, mutual, matches


async def _assigned(
    db: Any, exp: Experiment, holdout: float, salt: str, start: datetime, end: datetime
) -> dict[str, list[int]]:
    """Units per arm in the population, recomputed as serving assigns them."""
    with backend_errors("reading members failed"):
        users = (
            await db[USERS_COLLECTION]
            .find({}, {"_id": 1, exp.design.region_field: 1})
            .to_list(None)
        )
    members = [u for u in users if not is_held_out(str(u["_id"]), holdout, salt)]
    members = [u for u in members if in_experiment(exp, str(u["_id"]))]
    k, kind = len(exp.arms), exp.design.kind
    out: dict[str, list[int]] = {}
    if kind == DesignKind.user:
        out["viewer"] = np.bincount(
            [arm_index(exp, str(u["_id"])) for u in members], minlength=k
        ).tolist()
    if kind == DesignKind.two_sided:
        out["viewer"] = np.bincount(
            [arm_index(exp, f"viewer:{u['_id']}") for u in members], minlength=k
        ).tolist()
    if kind in PAIR_LEVEL:
        out["candidate"] = np.bincount(
            [candidate_arm(exp, str(u["_id"])) for u in members], minlength=2
        ).tolist()
    strata = await ExperimentStore(db).strata(exp.id) if exp.design.strata else {}
    if kind == DesignKind.cluster:
        clusters = await ExperimentStore(db).clusters(exp.id)
        found = {clusters.get(str(u["_id"])) or f"new:{u['_id']}" for u in members}
        arms = [
            unit_arm(exp, f"cluster:{c}", [f"cluster:{x}" for x in strata.get(c, ())])
            for c in found
        ]
        out["unit"] = np.bincount(arms, minlength=k).tolist()
    if kind == DesignKind.switchback:
        regions = {region_of(u, exp.design.region_field) or "unknown" for u in members}
        last, _ = period_of(exp, end)
        arms = [
            unit_arm(exp, f"switchback:{r}:{p}", [f"switchback:{x}:{p}" for x in strata.get(r, ())])
            for r in sorted(regions)
            for p in range(last + 1)
        ]
        out["unit"] = np.bincount(arms, minlength=k).tolist()
    return out


def both_sides(exp: Experiment, rows: Exposures) -> dict[str, list[dict[str, Any]]]:
    """Per arm: what viewers saw and did, and what candidates received."""
    arms = [a.name for a in exp.arms]
    cand_col = rows.candidate_arm if exp.pair_level else rows.viewer_arm
    out: dict[str, list[dict[str, Any]]] = {"viewer": [], "candidate": []}
    for side, who, arm_col in (
        ("viewer", rows.viewer, rows.viewer_arm),
        ("candidate", rows.candidate, cand_col),
    ):
        for i, name in enumerate(arms):
            sel = arm_col == i
            out[side].append(
                {
                    "arm": name,
                    "units": int(np.unique(who[sel]).shape[0]),
                    "impressions": int(sel.sum()),
                    **{k: int(v[sel].sum()) for k, v in rows.outcomes.items()},
                }
            )
    return out
