"""Experiments in MongoDB: definitions, their lifecycle, cluster snapshots.

* ``experiments``: one document per experiment (:meth:`Experiment.to_doc`, ``_id`` = id).
* ``experiment_clusters``: the cluster design's snapshot, taken at start from the member graph
  (``user_likes`` / ``user_matches`` of :mod:`opendisco.signals`), in chunks of
  :data:`CLUSTER_CHUNK` members: ``{_id: "<exp>\\x1f<k>", experiment, members: {m: c}}``
  (FerretDB pushes down only ``_id`` lookups; chunks keep each document small).
* the strata of a stratified cluster or switchback design (``design.strata``), taken at start
  in the same collection: ``{_id: "<exp>\x1fstrata\x1f<k>", experiment, strata: {unit: s}}``
  (units: cluster ids or regions), from the member graph of the same window — size = the
  unit's members, rate = their mutual likes per member (:func:`~._strata.strata_of`).
* ``experiment_locks``: the layer lease that makes two concurrent starts in one layer take
  disjoint ranges, and the pair-level lease that keeps two concurrent starts of pair-level
  experiments (in any layers) from both starting; and a lease per experiment that makes the
  first of two stops the only one.

Starting allocates the experiment's range of its layer (the lowest free one), refuses a full
layer and a second running pair-level experiment, and snapshots clusters; a stopped
experiment never runs again (its salt stays reserved: a new run is a new experiment).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError

from opendisco._backend import backend_errors
from opendisco._domain import USERS_COLLECTION
from opendisco._exceptions import InvalidInput, NotFound, validation_problems
from opendisco._store import MAX_WRITES_PER_COMMAND, lease
from opendisco.signals import USER_LIKES

from ._assign import region_of
from ._clusters import louvain_clusters
from ._model import BUCKETS, PAIR_LEVEL, DesignKind, Experiment, Status
from ._strata import strata_of

__all__ = ["CLUSTERS", "CLUSTER_CHUNK", "EXPERIMENTS", "LOCKS", "ExperimentStore", "free_offset"]

EXPERIMENTS = "experiments"
CLUSTERS = "experiment_clusters"
LOCKS = "experiment_locks"
CLUSTER_CHUNK = 5000
#: the lease a pair-level start holds beside its layer's (one pair-level experiment runs)
PAIR_LEVEL_LOCK = "pair-level"

log = logging.getLogger("opendisco.experiments")


def free_offset(width: int, taken: Iterable[tuple[int, int]], buckets: int = BUCKETS) -> int | None:
    """The lowest start of ``width`` free buckets given taken ``(offset, width)`` ranges."""
    at = 0
    for off, w in sorted(taken):
        if off - at >= width:
            return at
        at = max(at, off + w)
    return at if buckets - at >= width else None


class ExperimentStore:
    def __init__(self, db: Any) -> None:
        self.db = db
        self.coll = db[EXPERIMENTS]
        self.clusters_coll = db[CLUSTERS]
        self.locks = db[LOCKS]
        #: experiments the last :meth:`list` could not read: id -> why
        self.unreadable: dict[str, str] = {}

    async def create(self, exp: Experiment) -> Experiment:
        exp = exp.model_copy(
            update={"status": Status.draft, "start": None, "stop": None, "offset": None}
        )
        with backend_errors(f"creating experiment {exp.id!r} failed"):
            try:
                await self.coll.insert_one(exp.to_doc())
            except DuplicateKeyError as exc:
                raise InvalidInput(f"experiment {exp.id!r} exists") from exc
        return exp

    async def get(self, exp_id: str) -> Experiment:
        return _readable(await self._doc(exp_id))

    async def _docs(self) -> list[dict[str, Any]]:
        with backend_errors("listing experiments failed"):
            return list(await self.coll.find({}).to_list(None))

    async def list(self) -> list[Experiment]:
        """Every experiment this version can read; the others are in :attr:`unreadable`
        (``{id: problem}``, logged): one stored document that fails validation (hand-edited,
        or written under older rules) failed every listing, start and registry refresh
        with a pydantic ValidationError."""
        out, self.unreadable = [], {}
        for doc in await self._docs():
            try:
                out.append(_readable(doc))
            except InvalidInput as exc:
                self.unreadable[str(doc.get("_id"))] = str(exc)
                log.warning("%s", exc)
        return sorted(out, key=lambda e: (e.layer, e.id))

    async def running(self) -> list[Experiment]:
        return [e for e in await self.list() if e.status == Status.running]

    async def start(self, exp_id: str, now: datetime | None = None, seed: int = 0) -> Experiment:
        now = now or datetime.now(UTC)
        exp = await self.get(exp_id)
        if exp.status != Status.draft:
            raise InvalidInput(f"experiment {exp_id!r} is {exp.status.value}, not draft")
        # a pair-level start also holds the one pair-level lease: its exclusivity spans
        # layers, and two in two layers each under its own layer's lease both started
        ids = [f"layer:{exp.layer}", *([PAIR_LEVEL_LOCK] if exp.pair_level else [])]
        async with lease(self.locks, ids, lease_s=30, wait_s=10, what="layer"):
            # again under the lease: of two starts of one experiment, the second took another
            # range and overwrote the first's offset and start (its members changed arms)
            exp = await self.get(exp_id)
            if exp.status != Status.draft:
                raise InvalidInput(f"experiment {exp_id!r} is {exp.status.value}, not draft")
            running = [_Range.of(d) for d in await self._docs()]
            running = [r for r in running if r.status == Status.running.value]
            if exp.pair_level and any(r.pair_level for r in running):
                raise InvalidInput("another pair-level (item/two_sided) experiment is running")
            # from the stored fields (an unreadable running experiment still holds its range)
            taken = [(r.offset, r.width) for r in running if r.layer == exp.layer]
            offset = free_offset(exp.width, taken)
            if offset is None:
                raise InvalidInput(
                    f"layer {exp.layer!r} has no free {exp.traffic:.1%} (taken: {taken})"
                )
            if exp.design.kind == DesignKind.cluster or exp.design.strata:
                await self._snapshot(exp, now, seed)
            with backend_errors(f"starting experiment {exp_id!r} failed"):
                await self.coll.update_one(
                    {"_id": exp_id},
                    {"$set": {"status": Status.running.value, "start": now, "offset": offset}},
                )
        return exp.model_copy(update={"status": Status.running, "start": now, "offset": offset})

    async def stop(self, exp_id: str, now: datetime | None = None) -> Experiment | None:
        """Stop a running experiment; returns it as stopped, or None when it is stored in a
        form this version cannot read (stopped all the same, from its stored fields: it
        held its layer range and could not be stopped)."""
        now = now or datetime.now(UTC)
        # the experiment's own lease, not its layer's: a stop never waits for another
        # experiment's start (a cluster snapshot takes tens of seconds on a large graph)
        async with lease(self.locks, [f"stop:{exp_id}"], lease_s=30, wait_s=10, what="experiment"):
            # read under the lease: of two stops of one experiment, both were told "stopped"
            # and the later one moved its stop time (the readout's end) past the first's
            doc = await self._doc(exp_id)
            status = _Range.of(doc).status
            if status != Status.running.value:
                raise InvalidInput(f"experiment {exp_id!r} is {status}, not running")
            with backend_errors(f"stopping experiment {exp_id!r} failed"):
                await self.coll.update_one(
                    {"_id": exp_id, "status": Status.running.value},
                    {"$set": {"status": Status.stopped.value, "stop": now}},
                )
        try:
            exp = _readable(doc)
        except InvalidInput as exc:
            log.warning("stopped: %s", exc)
            return None
        return exp.model_copy(update={"status": Status.stopped, "stop": now})

    async def _doc(self, exp_id: str) -> dict[str, Any]:
        with backend_errors(f"reading experiment {exp_id!r} failed"):
            doc = await self.coll.find_one({"_id": exp_id})
        if doc is None:
            raise NotFound(f"experiment {exp_id!r} not found")
        return dict(doc)

    # -- clusters ---------------------------------------------------------------------------
    async def member_graph(self, since: datetime) -> tuple[list[str], list[tuple[str, str, float]]]:
        """Members and like edges (a mutual like counts on both edges) since ``since``."""
        with backend_errors("reading the member graph failed"):
            likes = await self.db[USER_LIKES].find({}, {"src": 1, "dst": 1, "at": 1}).to_list(None)
        edges = []
        for d in likes:
            at = d.get("at")
            if at is not None and at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            if at is None or at >= since:
                edges.append((str(d["src"]), str(d["dst"]), 1.0))
        with backend_errors("reading members failed"):
            users = await self.db[USERS_COLLECTION].find({}, {"_id": 1}).to_list(None)
        members = sorted({str(u["_id"]) for u in users} | {m for e in edges for m in e[:2]})
        return members, edges

    async def _snapshot(self, exp: Experiment, now: datetime, seed: int) -> None:
        members, edges = await self.member_graph(now - timedelta(days=exp.design.graph_days))
        with backend_errors(f"clearing the snapshot of {exp.id!r} failed"):
            await self.clusters_coll.delete_many({"experiment": exp.id})
        if exp.design.kind == DesignKind.cluster:
            units = louvain_clusters(members, edges, resolution=exp.design.resolution, seed=seed)
            await self._write(exp.id, "", units)
        else:
            with backend_errors("reading members failed"):
                users = (
                    await self.db[USERS_COLLECTION]
                    .find({}, {exp.design.region_field: 1})
                    .to_list(None)
                )
            units = {
                str(u["_id"]): region_of(u, exp.design.region_field) or "unknown" for u in users
            }
        if exp.design.strata:
            await self._write(exp.id, "strata\x1f", _unit_strata(units, edges, exp.design.strata))

    async def _write(self, exp_id: str, prefix: str, mapping: dict[str, Any]) -> None:
        """``mapping`` in chunks of :data:`CLUSTER_CHUNK` keys (``members``; strata: ``strata``)."""
        items = sorted(mapping.items())
        field = "strata" if prefix else "members"
        docs = [
            {
                "_id": f"{exp_id}\x1f{prefix}{k}",
                "experiment": exp_id,
                field: dict(items[i : i + CLUSTER_CHUNK]),
            }
            for k, i in enumerate(range(0, len(items), CLUSTER_CHUNK))
        ]
        with backend_errors(f"writing the snapshot of {exp_id!r} failed"):
            for i in range(0, len(docs), MAX_WRITES_PER_COMMAND):
                await self.clusters_coll.insert_many(docs[i : i + MAX_WRITES_PER_COMMAND])

    async def strata(self, exp_id: str) -> dict[str, tuple[str, ...]]:
        """Each unit (cluster or region) of a stratified design → its stratum's units (empty
        when the experiment has none)."""
        by_unit = await self._read(exp_id, "strata\x1f", "strata")
        groups: dict[int, list[str]] = {}
        for unit, s in by_unit.items():
            groups.setdefault(int(s), []).append(unit)
        return {u: tuple(sorted(groups[int(s)])) for u, s in by_unit.items()}

    async def clusters(self, exp_id: str) -> dict[str, str]:
        """The snapshot ``{member: cluster}`` (empty when the experiment has none)."""
        return await self._read(exp_id, "", "members")

    async def _read(self, exp_id: str, prefix: str, field: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        k = 0
        while True:
            ids = [f"{exp_id}\x1f{prefix}{j}" for j in range(k, k + 20)]
            with backend_errors(f"reading the snapshot of {exp_id!r} failed"):
                docs = await self.clusters_coll.find({"_id": {"$in": ids}}).to_list(None)
            for d in docs:
                out.update(d[field])
            if len(docs) < len(ids):
                return out
            k += 20


def _readable(doc: dict[str, Any]) -> Experiment:
    """The stored experiment, or :class:`InvalidInput` naming why this version cannot read it."""
    try:
        return Experiment.from_doc(doc)
    except ValidationError as exc:
        raise InvalidInput(
            f"experiment {doc.get('_id')!r} is stored in a form this version cannot read: "
            f"{validation_problems(exc, 'experiment')}"
        ) from exc


@dataclass(frozen=True)
class _Range:
    """What a start needs of a stored experiment, read from its fields alone."""

    status: str
    layer: str
    offset: int
    width: int
    pair_level: bool

    @classmethod
    def of(cls, doc: dict[str, Any]) -> _Range:
        design = doc.get("design") if isinstance(doc.get("design"), dict) else {}
        traffic = doc.get("traffic", 1.0)
        traffic = float(traffic) if isinstance(traffic, int | float) else 1.0
        offset = doc.get("offset")
        return cls(
            status=str(doc.get("status")),
            layer=str(doc.get("layer", "default")),
            offset=int(offset) if isinstance(offset, int | float) else 0,
            width=max(1, round(min(max(traffic, 0.0), 1.0) * BUCKETS)),
            pair_level=design.get("kind", DesignKind.user.value) in PAIR_LEVEL,
        )


def _unit_strata(
    unit_of: dict[str, str], edges: list[tuple[str, str, float]], per: int
) -> dict[str, int]:
    """Each unit's stratum (:func:`~._strata.strata_of`) from the member graph: size = the
    unit's members, rate = their mutual likes (a like answered by a like) per member."""
    units = sorted(set(unit_of.values()))
    index = {u: i for i, u in enumerate(units)}
    size = np.zeros(len(units))
    mutual = np.zeros(len(units))
    for u in unit_of.values():
        size[index[u]] += 1
    liked = {(a, b) for a, b, _ in edges}
    for a, b in liked:
        if (b, a) in liked and a in unit_of:
            mutual[index[unit_of[a]]] += 1
    rate = np.divide(mutual, size, out=np.zeros_like(size), where=size > 0)
    return dict(zip(units, strata_of(units, size, rate, per).tolist(), strict=True))
