"""Per-user real-time state in MongoDB ``user_state``.

``{_id: user_id, positives: [{e, id, ts, w}], negatives: [...], seen: [...], liked: [...],
blocked: [...], fatigue: [{c: category, n}], vector: <BSON float32 vector> | None,
behaviour: <...> | None, behaviour_model, version, updated_at}``. ``seen`` keeps the last
``max_seen`` ids shown or acted on; ``liked`` the last ``max_liked`` liked, so a like is never
shown again after it leaves ``seen`` (the hard rules read both).

The taste and behaviour vectors are BSON Binary float32 vectors (:mod:`opendisco._stored`):
FerretDB parses an array of doubles number by number on every read (a 384-d state cost it
~3 ms; 16 owners' tastes per request ~50 ms). States written before (arrays) still read.

Each member's taste alone is also kept in ``member_tastes`` (``{_id, vector, n_likes,
n_passes}``): a request reads up to hundreds of candidates' owners' tastes, and FerretDB
converts a whole document whatever the projection (500 states of 2,000 seen ids: 14.1 s; 500
tastes: 0.18 s; load 9). Written after the state under the same lease when it changed; a
crash in between leaves the previous taste until the next like or pass (a feature, never a
rule); a member without one gets the reciprocal estimate's prior.

Entries are keyed by event id, so merging the same event twice changes nothing (idempotent);
vectors are recomputed from the bounded recent lists, never accumulated.

Concurrent writers of one user: FerretDB 1.x applies updates as non-atomic read-modify-write
(concurrent ``$push`` loses entries, a ``replace_one({_id, version})`` CAS can match twice),
but a unique ``_id`` insert is atomic: read-merge-write runs under a per-user lease in
``user_state_locks`` (``insert_one({_id: user, owner, expires})``, released by
``delete_one({_id, owner})``; an expired lease, left by a crashed writer, is taken over). The
write is fenced by the lease's token (``_store_fence``): one held past the client's timeout
can no longer land after the next holder's newer state, its writer's own fence failed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ReplaceOne

from opendisco._backend import backend_errors
from opendisco._domain import stored_ids
from opendisco._store import Lease, bulk_write_chunked
from opendisco._stored import as_vector, store_vector, vector_values

from ._store_fence import lease_documents, replace_fenced

__all__ = [
    "USER_STATE",
    "UserState",
    "UserStateConfig",
    "UserStateStore",
    "merge_events",
]

USER_STATE = "user_state"
USER_LOCKS = "user_state_locks"
#: each member's taste alone (vector, likes and passes given): what others' requests read
MEMBER_TASTES = "member_tastes"
#: what a member's like rate counts: likes given versus passes given
LIKE_TYPES = frozenset({"like"})
PASS_TYPES = frozenset({"pass", "skip", "hide"})
#: a member's taste as others' requests read it: (content vector | None, likes, passes given)
Taste = tuple[np.ndarray | None, int, int]


class UserStateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    half_life_hours: float = Field(72.0, gt=0, description="Decay half life of event weights.")
    negative_weight: float = Field(0.5, ge=0, description="Scale of negatives in the vector.")
    max_recent: int = Field(50, ge=1, description="Positives/negatives kept per user.")
    max_seen: int = Field(2000, ge=1, description="Seen ids kept per user (most recent).")
    max_liked: int = Field(10_000, ge=1, description="Liked ids kept per user: never shown again.")
    max_blocked: int = Field(2000, ge=1)
    fold_in_reg: float = Field(0.1, gt=0, description="Ridge of the behaviour fold-in.")


@dataclass(frozen=True)
class UserState:
    user_id: str
    positives: list[dict[str, Any]] = field(default_factory=list)  # {e, id, ts, w}
    negatives: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    fatigue: dict[str, float] = field(default_factory=dict)
    vector: list[float] | None = None
    behaviour: list[float] | None = None
    version: int = 0
    updated_at: datetime | None = None
    applied: list[str] = field(default_factory=list)  # recent event ids merged (dedup)
    #: likes and passes (pass/skip/hide) given, ever: the member's like rate as a viewer, what
    #: the reciprocal estimate of others' recommendations reads
    n_likes: int = 0
    n_passes: int = 0
    #: merged while the engine could not be read: the vectors do not reflect every positive
    #: yet (recomputed by the member's next event or the recovery sweep's repair)
    vectors_stale: bool = False
    #: items liked, most recent last: excluded for good, also after they leave ``seen``
    liked: list[str] = field(default_factory=list)
    #: the served behaviour model when ``behaviour`` was folded (None: none published;
    #: ``_folding``)
    behaviour_model: str | None = None

    @property
    def recent_positive_ids(self) -> list[str]:
        return self.positive_ids_merged_before(math.inf)

    def positive_ids_merged_before(self, index: float, leave_out: Container[str] = ()) -> list[str]:
        """Positive item ids, most recent first, once each, of the entries merged before the
        ``index``-th of ``applied`` (merge order; an entry whose event it no longer names was
        merged before all), without those of the events ``leave_out``."""
        order = {e: i for i, e in enumerate(self.applied)}
        kept = (
            p["id"]
            for p in reversed(self.positives)
            if p.get("e") not in leave_out and order.get(p.get("e"), -1) < index
        )
        return list(dict.fromkeys(kept))

    def taste_doc(self) -> dict[str, Any]:
        """What others' requests read of this member (:meth:`UserStateStore.tastes`)."""
        return {
            "_id": self.user_id,
            "vector": _stored(self.vector),
            "n_likes": self.n_likes,
            "n_passes": self.n_passes,
        }

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.user_id,
            "positives": self.positives,
            "negatives": self.negatives,
            "seen": self.seen,
            "liked": self.liked,
            "blocked": self.blocked,
            "fatigue": [{"c": k, "n": v} for k, v in self.fatigue.items()],
            "vector": _stored(self.vector),
            "behaviour": _stored(self.behaviour),
            "version": self.version,
            "updated_at": self.updated_at,
            "applied": self.applied,
            "n_likes": self.n_likes,
            "n_passes": self.n_passes,
            **({"vectors_stale": True} if self.vectors_stale else {}),
            **({"behaviour_model": self.behaviour_model} if self.behaviour_model else {}),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], *, salvage: bool = False) -> UserState:
        """The state as stored (``salvage``: a writer's read, see
        :func:`~opendisco._domain.stored_ids`)."""
        where = f"user_state {doc['_id']!r}"
        return cls(
            user_id=str(doc["_id"]),
            positives=list(doc.get("positives") or []),
            negatives=list(doc.get("negatives") or []),
            seen=stored_ids(doc.get("seen"), f"{where} seen", salvage=salvage),
            blocked=stored_ids(doc.get("blocked"), f"{where} blocked", salvage=salvage),
            fatigue={str(f["c"]): float(f["n"]) for f in doc.get("fatigue") or []},
            vector=_values(doc.get("vector")),
            behaviour=_values(doc.get("behaviour")),
            version=int(doc.get("version", 0)),
            updated_at=doc.get("updated_at"),
            applied=list(doc.get("applied") or []),
            n_likes=int(doc.get("n_likes") or 0),
            n_passes=int(doc.get("n_passes") or 0),
            vectors_stale=bool(doc.get("vectors_stale")),
            liked=stored_ids(doc.get("liked"), f"{where} liked", salvage=salvage),
            behaviour_model=doc.get("behaviour_model") or None,
        )


def _stored(vector: list[float] | None) -> Any:
    return None if vector is None else store_vector(vector)


def _values(value: Any) -> list[float] | None:
    vec = as_vector(value)
    if vec is None:
        return None
    return vector_values(vec) if vec.dtype == np.float32 else [float(x) for x in vec]


def aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def merge_events(
    state: UserState,
    events: Sequence[Mapping[str, Any]],
    categories: Mapping[str, str | None],
    cfg: UserStateConfig,
) -> UserState:
    """Pure: fold validated events (``id, type, item_id, ts, weight``) into the state.

    Events whose id was already merged are skipped, so re-applying a batch is a no-op.
    """
    done = set(state.applied) | {e["e"] for e in (*state.positives, *state.negatives)}
    pos, neg = list(state.positives), list(state.negatives)
    seen, blocked, liked = list(state.seen), list(state.blocked), list(state.liked)
    fatigue = dict(state.fatigue)
    applied = list(state.applied)
    n_likes, n_passes = state.n_likes, state.n_passes
    for ev in events:
        if ev["id"] in done:
            continue
        done.add(ev["id"])
        applied.append(ev["id"])
        item, w, kind = ev["item_id"], float(ev["weight"]), ev["type"]
        n_likes += kind in LIKE_TYPES
        n_passes += kind in PASS_TYPES
        entry = {"e": ev["id"], "id": item, "ts": aware(ev["ts"]), "w": abs(w)}
        if w > 0:
            pos.append(entry)
        elif w < 0:
            neg.append(entry)
            cat = categories.get(item)
            if cat:
                fatigue[cat] = fatigue.get(cat, 0.0) + (1.0 if kind == "hide" else 0.5)
        if kind == "hide":
            blocked.append(item)
        if kind in LIKE_TYPES:
            liked.append(item)
        seen.append(item)
    pos.sort(key=lambda p: p["ts"])
    neg.sort(key=lambda p: p["ts"])
    return replace(
        state,
        positives=pos[-cfg.max_recent :],
        negatives=neg[-cfg.max_recent :],
        seen=list(dict.fromkeys(reversed(seen)))[: cfg.max_seen][::-1],
        blocked=list(dict.fromkeys(reversed(blocked)))[: cfg.max_blocked][::-1],
        liked=list(dict.fromkeys(reversed(liked)))[: cfg.max_liked][::-1],
        fatigue=fatigue,
        applied=applied[-4 * cfg.max_recent :],
        n_likes=n_likes,
        n_passes=n_passes,
    )


class UserStateStore:
    """Reads and optimistic writes of ``user_state`` documents."""

    #: batches of at most this many users are read with concurrent point reads
    point_reads = 8
    #: a lease outlives a crashed holder by this long; waiters give up after lock_wait_s
    lease_s = 5.0
    lock_wait_s = 10.0

    def __init__(self, db: Any, cfg: UserStateConfig | None = None) -> None:
        self.coll = db[USER_STATE]
        self.tastes_coll = db[MEMBER_TASTES]
        self.cfg = cfg or UserStateConfig()

    async def get(self, user_id: str) -> UserState:
        """The user's state (an empty one for an unknown user)."""
        return (await self.get_many([user_id]))[user_id]

    async def get_many(
        self, user_ids: Iterable[str], *, salvage: bool = False
    ) -> dict[str, UserState]:
        """The states of ``user_ids`` (``salvage``: a writer's read, which rewrites a list
        holding odd entries without them, :func:`~opendisco._domain.stored_ids`; serving's
        read fails on it instead)."""
        ids = list(dict.fromkeys(user_ids))
        with backend_errors("user_state lookup failed"):
            if len(ids) <= self.point_reads:
                # _id equality is a point read on every backend (FerretDB scans for $in)
                found_docs = await asyncio.gather(*(self.coll.find_one({"_id": u}) for u in ids))
                docs = [d for d in found_docs if d is not None]
            else:
                docs = await self.coll.find({"_id": {"$in": ids}}).to_list(None)
        found = {d["_id"]: UserState.from_doc(d, salvage=salvage) for d in docs}
        return {u: found.get(u) or UserState(user_id=u) for u in ids}

    async def stale_vectors(self, limit: int, behaviour_model: str | None = None) -> list[str]:
        """Members whose vectors are to be folded again (:func:`needs_refold`): merged without
        the items' vectors (``vectors_stale``), or folded from another behaviour model than
        ``behaviour_model`` (a state without the field: none published)."""
        query = {"$or": [{"vectors_stale": True}, {"behaviour_model": {"$ne": behaviour_model}}]}
        with backend_errors("user_state scan failed"):
            docs = await self.coll.find(query, projection={"_id": 1}, limit=limit).to_list(None)
        return [str(d["_id"]) for d in docs]

    async def tastes(self, user_ids: Iterable[str]) -> dict[str, Taste]:
        """``{member: (content vector | None, likes given, passes given)}`` of the members who
        have a taste document (one ``find`` by ``_id`` in ``member_tastes``: the candidates'
        owners in the reciprocal estimate)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        with backend_errors("member taste lookup failed"):
            docs = await self.tastes_coll.find({"_id": {"$in": ids}}).to_list(None)
        return {str(d["_id"]): taste_of(d) for d in docs}

    async def save(self, state: UserState) -> None:
        """Write ``state`` (hold :meth:`locked` for its user while reading and writing)."""
        await self.save_many([state])

    async def save_many(
        self,
        states: Iterable[UserState],
        previous: Mapping[str, UserState] | None = None,
        held: Lease | None = None,
    ) -> None:
        """Write ``states`` under :meth:`locked`'s leases ``held``; a member's taste only when
        it differs from their ``previous`` state's (read under the same leases): most batches
        are impressions and seen marks, which change the state but not the taste. Fenced by
        ``held``'s token (``_store_fence.replace_fenced``): a write held past the client's
        timeout landed after, and undid, the next holder's newer state (likes, hides lost)."""
        states = list(states)
        docs = [{**s.to_doc(), "version": s.version + 1} for s in states]
        await replace_fenced(
            self.coll, docs, optional=("vectors_stale", "behaviour_model"), held=held
        )
        before = previous or {}
        tastes = [
            ReplaceOne({"_id": s.user_id}, _touched(doc), upsert=True)
            for s, doc in ((s, s.taste_doc()) for s in states)
            if (old := before.get(s.user_id)) is None or old.taste_doc() != doc
        ]
        await bulk_write_chunked(self.tastes_coll, tastes)

    def locked(self, user_ids: Iterable[str]) -> contextlib.AbstractAsyncContextManager[Lease]:
        """Hold the leases of all ``user_ids`` (all or none, retried with jittered backoff;
        a taker of one fences its previous holder's :meth:`save_many` first)."""
        locks = self.coll.database[USER_LOCKS]
        return lease_documents(
            self.coll, locks, user_ids, lease_s=self.lease_s, wait_s=self.lock_wait_s
        )


def taste_of(doc: Mapping[str, Any]) -> Taste:
    """Pure: a ``member_tastes`` document as (content vector | None, likes, passes given)."""
    return as_vector(doc.get("vector")), int(doc.get("n_likes") or 0), int(doc.get("n_passes") or 0)


def _touched(taste: dict[str, Any]) -> dict[str, Any]:
    """A taste document as written: with when (``at``: the processes' copies read changes by
    it, ``signals._taste_copy``)."""
    return {**taste, "at": datetime.now(UTC)}
