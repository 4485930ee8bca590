"""``FeatureStore``: every feature of a candidate batch in a bounded number of round trips.

Per :meth:`FeatureStore.lookup` call, whatever the number of candidates, at most:

* 1 OpenSearch ``mget`` of content + behaviour vectors — only for ids whose vectors neither came
  packed with the candidate hits (``ingest.PACKED_FIELD``, float16, the normal case: no round
  trip at all) nor sit in the TTL cache (documents indexed before the packed field existed),
* the exposure counters (impressions in the window, paced exposure, live trend): from the
  process's copy (``signals.SignalCopies``, ≤ ~1 s behind the engine) when the API keeps
  one, else 1 OpenSearch search of their doc values (caps are not read here: the candidate
  queries exclude capped items by the engine's realtime list),
* inbound attention: from the process's copy, else 1 MongoDB ``find`` (one document per
  candidate; cached with the vectors' TTL),
* 1 MongoDB ``find`` of graph proximity to the user's recent items,
* 1 MongoDB ``find`` of the trained item–item rows (``signals.ItemSimilarity``) of the
  member's recent positives, only for rows not in the item-metadata cache (the table changes
  only when a trainer replaces it; the pointer to the served model is read every
  :data:`SIM_POINTER_S`, and a new model drops every cached row),
* for member candidates (profiles) only, their owners' tastes (content vector, likes and
  passes given: the reciprocal estimate): from the process's copy, else 1 MongoDB ``find``
  (the vector stored as a BSON float32 vector, which FerretDB reads ~10× faster than an
  array; cached with the vectors' TTL),
* 1 OpenSearch ``mget`` of the member's recent positives' profile fields (category, tags,
  creation date, popularity: :class:`~opendisco.rerank.MemberProfile`), only for ids not in
  the item-metadata cache (these fields change rarely; the recent items of active members
  overlap heavily),

issued concurrently. Why this module is long: one store owns every lookup a request's features
need, so that their round trips are issued together and their caches shared. The counters
reading also brings each candidate's paced (decayed) exposure and its live decayed like/match
count.

What needs no candidate — the viewer's taste profile (the profile-fields ``mget`` above), the
item–item rows of their recent positives and their own profile vector (what the candidates'
tastes are compared with: the vector fetch, usually cached) — is :meth:`FeatureStore.viewer`,
a :class:`ViewerFeatures`; the served pipeline starts it before the candidate ``_msearch``
and hands it to :meth:`FeatureStore.for_batch`, so after the candidates only the per-candidate
lookups (counters, inbound, owners' tastes) are waited for.

Vectors change only when an item is re-encoded or retrained, so the cache
TTL bounds staleness after ``opendisco train``.

While MongoDB refuses, inbound attention and the owners' tastes come from the process's copy
as its last read left it, however old (not cached): a copy goes stale when the store stops
answering its reads, and the features then failed every request a few seconds into a store
outage — anonymous pages included, which need nothing else from the store. Features only:
eligibility is never read from a copy (``signals._copies``).

One store serves every request of a process (the API builds one ``Discovery``), so the caches
are shared; vector misses are single-flight: an id already being fetched by a concurrent
request is awaited, not fetched again (the trending/fresh heads overlap across users), and the
vectors are kept as float64 arrays (the same values as the JSON floats, no per-request
list→array conversion).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import NotFoundError

from opendisco._backend import backend_errors
from opendisco._cache import TTLCache
from opendisco._exceptions import SearchBackendError, StoreBackendError
from opendisco._settings import Settings
from opendisco._stored import as_vector
from opendisco.ingest import PACKED_FIELD, unpack_many
from opendisco.signals import (
    RECENT_FANOUT,
    ExposureMirror,
    ExposureStore,
    InboundCounter,
    Inbox,
    ItemGraph,
    ItemSimilarity,
    SignalCopies,
    UserState,
    UserStateStore,
    rate_per_day,
    summed_weights,
)

from ._profile import PROFILE_FIELDS, MemberProfile, profile_features
from ._similarity import recency_scales
from ._types import CandidateBatch, Features, RerankContext

__all__ = ["FeatureStore", "ViewerFeatures"]

#: how long a process keeps serving the item–item model it found before reading the pointer again
SIM_POINTER_S = 30.0


def _array(v: Any) -> np.ndarray | None:
    """A stored vector as a float64 array (None when absent or not a flat vector)."""
    vec = as_vector(v)
    return None if vec is None else vec.astype(np.float64, copy=False)


@dataclass(frozen=True)
class ViewerFeatures:
    """What a request's features need from the viewer alone: the taste profile of their recent
    positives, the summed item–item weights from those positives to every neighbour, and their
    own profile vector (None without a profile)."""

    profile: MemberProfile = field(default_factory=MemberProfile)
    similar: Mapping[str, float] = field(default_factory=dict)
    vector: np.ndarray | None = None
    #: the same sums with each positive's row weighted by its recency (``recency_scales``)
    similar_recent: Mapping[str, float] = field(default_factory=dict)


def _taste_rows(
    got: Mapping[str, tuple[Any, int, int]], owners: Sequence[str]
) -> dict[str, tuple[Any, int, int]]:
    """Each owner's (taste vector as an array, likes given, passes given) from ``got``
    (a store's or a copy's rows); an owner without a row has no history: ``(None, 0, 0)``."""
    rows = {o: got.get(o, (None, 0, 0)) for o in owners}
    return {o: (_array(v), n, p) for o, (v, n, p) in rows.items()}


class FeatureStore:
    """Batched, cached feature lookups for :class:`~opendisco.rerank.Reranker`."""

    def __init__(
        self,
        settings: Settings,
        os_client: AsyncOpenSearch,
        db: Any,
        *,
        exposure: Any | None = None,
        copies: SignalCopies | None = None,
        cache_ttl_s: float = 60.0,
        meta_ttl_s: float = 600.0,
        inbound_days: int = 7,
    ) -> None:
        self.settings = settings
        self.os = os_client
        self.db = db
        if exposure is None:
            exposure = copies.exposure.store if copies else ExposureStore(os_client, settings)
        self.exposure = exposure
        #: the process's copies of the per-candidate signals (read while fresh), if it keeps any
        self.copies = copies
        #: what the exposure features read: the process's copy of the counters, else the engine
        self.counters: ExposureStore | ExposureMirror = copies.exposure if copies else exposure
        #: co-engagement edges: rows read by requests are kept ``graph_cache_s``
        self.graph = ItemGraph(db, cache_s=settings.graph_cache_s)
        #: the served model's rows: cached ``meta_ttl_s``, all dropped when the model changes
        self.similarity = ItemSimilarity(db, pointer_s=min(SIM_POINTER_S, meta_ttl_s))
        self.sim_rows = TTLCache(meta_ttl_s)
        self._sim_model = ""
        self.inbound = InboundCounter(db)
        self.inbound_days = inbound_days
        self.states = UserStateStore(db)
        self.vectors = TTLCache(cache_ttl_s)
        self.inbound_cache = TTLCache(cache_ttl_s)
        self.taste_cache = TTLCache(cache_ttl_s)
        self.meta = TTLCache(meta_ttl_s)
        #: id -> the in-flight mget that will bring its vectors (shared by concurrent requests)
        self._inflight: dict[str, asyncio.Future[dict[str, tuple[Any, Any]]]] = {}

    async def _vectors(self, ids: list[str]) -> dict[str, tuple[Any, Any]]:
        hit, miss = self.vectors.get_many(ids)
        if not miss:
            return hit
        waiting = {id(f): f for i in miss if (f := self._inflight.get(i)) is not None}
        fetch = [i for i in miss if i not in self._inflight]
        mine: asyncio.Future[dict[str, tuple[Any, Any]]] | None = None
        if fetch:
            mine = asyncio.ensure_future(self._mget_vectors(fetch))
            for i in fetch:
                self._inflight[i] = mine
            mine.add_done_callback(lambda f, ids=tuple(fetch): self._landed(ids, f))
        out = dict(hit)
        if mine is not None:
            out.update(await asyncio.shield(mine))  # a cancelled request leaves it to the others
        for fut in waiting.values():
            try:
                got = await asyncio.shield(fut)
            except SearchBackendError:
                raise
            except Exception as exc:  # the other request's fetch failed in some other way
                raise SearchBackendError(f"feature vector lookup failed: {exc}") from exc
            out.update({i: got[i] for i in miss if i in got})
        return {i: out[i] for i in ids if i in out}

    def _landed(self, ids: tuple[str, ...], fut: asyncio.Future[Any]) -> None:
        for i in ids:
            if self._inflight.get(i) is fut:
                del self._inflight[i]
        if not fut.cancelled():
            fut.exception()  # retrieved here so a failure nobody awaits is not logged as lost

    async def _mget_vectors(self, ids: list[str]) -> dict[str, tuple[Any, Any]]:
        """The packed float16 vectors of ``ids`` (what the candidate hits carry); the float
        arrays only for documents without a packing. Reading just the packed field keeps
        the engine from writing out 416 floats as JSON per document: 3–4.5 vs 8–12 ms for 20
        documents (bench/README.md, api)."""
        docs = await self._mget(ids, PACKED_FIELD, "feature vector lookup")
        packed = {i: src[PACKED_FIELD] for i, src in docs.items() if src.get(PACKED_FIELD)}
        got = self._unpack(packed, list(packed))
        if unpacked := [i for i in docs if i not in got]:
            arrays = await self._mget(unpacked, "embedding,behaviour", "feature vector lookup")
            got.update(
                {
                    i: (_array(src.get("embedding")), _array(src.get("behaviour")))
                    for i, src in arrays.items()
                }
            )
        self.vectors.put_many(got)  # misses are not cached: a new item may appear any second
        return got

    async def _mget(self, ids: list[str], fields: str, what: str) -> dict[str, dict[str, Any]]:
        """``id -> _source`` (``fields`` only) of the found ``ids``: one non-realtime mget."""
        with backend_errors(f"{what} failed"):
            try:
                resp = await self.os.mget(
                    index=self.settings.index_alias,
                    body={"ids": ids},
                    params={"_source_includes": fields, "realtime": "false"},
                )
            except NotFoundError:
                return {}
        return {d["_id"]: d.get("_source") or {} for d in resp["docs"] if d.get("found")}

    def _unpack(self, packed: Mapping[str, str], ids: list[str]) -> dict[str, tuple[Any, Any]]:
        d, b = self.settings.embedding_dim, self.settings.behaviour_dim
        return unpack_many({i: p for i in ids if (p := packed.get(i))}, d, b)

    async def _meta(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Profile fields (:data:`PROFILE_FIELDS`) of ``ids``: cached, misses in one mget."""
        hit, miss = self.meta.get_many(list(dict.fromkeys(ids)))
        if not miss:
            return hit
        got = await self._mget(miss, ",".join(PROFILE_FIELDS), "item profile lookup")
        self.meta.put_many(got)
        return {**hit, **got}

    async def profile(self, recent: Sequence[str], now: datetime | None = None) -> MemberProfile:
        """The member's :class:`MemberProfile` from their recent positives' items."""
        if not recent:
            return MemberProfile()
        meta = await self._meta(recent)
        docs = [meta[i] for i in dict.fromkeys(recent) if i in meta]
        return MemberProfile.from_items(docs, now or datetime.now(UTC))

    async def _inbound(self, ids: list[str]) -> dict[str, int]:
        """Inbound attention of ``ids``: the copy while fresh, else the store (cached); the
        store refusing, the copy as its last read left it (module docstring)."""
        if self.copies and (got := self.copies.inbound.counts(ids, self.inbound_days)) is not None:
            return {i: got.get(i, 0) for i in ids}
        hit, miss = self.inbound_cache.get_many(ids)
        if miss:
            try:
                got = await self.inbound.counts(miss, days=self.inbound_days)
            except StoreBackendError:
                copies = self.copies
                got = copies and copies.inbound.counts(miss, self.inbound_days, stale_ok=True)
                if got is None:
                    raise
                return {**hit, **{i: got.get(i, 0) for i in miss}}
            fresh = {i: got.get(i, 0) for i in miss}
            self.inbound_cache.put_many(fresh)
            hit.update(fresh)
        return hit

    async def _tastes(self, owners: list[str]) -> dict[str, tuple[Any, int, int]]:
        """Each owner's (taste vector, likes given, passes given); members without a state
        are cached as such too (no history is an answer). The copy while fresh, else the
        store; the store refusing, the copy as its last read left it (module docstring)."""
        if self.copies and (got := self.copies.tastes.tastes(owners)) is not None:
            return _taste_rows(got, owners)
        hit, miss = self.taste_cache.get_many(owners)
        if miss:
            try:
                got = await self.states.tastes(miss)
            except StoreBackendError:
                got = self.copies and self.copies.tastes.tastes(miss, stale_ok=True)
                if got is None:
                    raise
                return {**hit, **_taste_rows(got, miss)}
            fresh = _taste_rows(got, miss)
            self.taste_cache.put_many(fresh)
            hit.update(fresh)
        return hit

    async def profile_vector(self, profile_id: str | None) -> np.ndarray | None:
        """The viewer's own profile content vector (cached like every item vector)."""
        if not profile_id:
            return None
        cv, _ = (await self._vectors([str(profile_id)])).get(str(profile_id), (None, None))
        return cv if cv is not None and len(cv) == self.settings.embedding_dim else None

    async def _graph(self, recent: Sequence[str], ids: list[str]) -> dict[str, float]:
        return await self.graph.proximity(recent, ids) if recent else {}

    async def _similarity_rows(self, recent: Sequence[str]) -> list[Mapping[str, float]]:
        """The trained item–item rows of ``recent`` (deduplicated, most recent first; an item
        without a row reads empty). Cached: the table changes only when a trainer replaces it."""
        order = list(dict.fromkeys(recent))
        if not order:
            return []
        served = await self.similarity.served()
        if served.name != self._sim_model:  # rows of two models never summed together
            self.sim_rows.clear()
            self._sim_model = served.name
        rows, miss = self.sim_rows.get_many(order)
        if miss:
            found = await self.similarity.rows(miss, served)
            fetched = {i: found.get(i, {}) for i in miss}
            self.sim_rows.put_many(fetched)
            rows.update(fetched)
        return [rows.get(i, {}) for i in order]

    async def similar_recent(self, recent: Sequence[str]) -> dict[str, float]:
        """The ``item_sim_recent`` sums alone (the ``itemsim`` candidate source's weights):
        the rows of ``recent`` (most recent first) weighted by :func:`recency_scales`."""
        rows = await self._similarity_rows(recent)
        return summed_weights(rows, recency_scales(len(rows), self.settings.item_sim_half_life))

    async def similar_both(
        self, recent: Sequence[str]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """The ``item_sim`` sums and the ``item_sim_recent`` ones (rows weighted by
        :func:`recency_scales`) from ``recent`` (most recent first), from one read."""
        rows = await self._similarity_rows(recent)
        scales = recency_scales(len(rows), self.settings.item_sim_half_life)
        return summed_weights(rows), summed_weights(rows, scales)

    async def _similar(
        self, recent: Sequence[str], ids: list[str]
    ) -> tuple[dict[str, float], dict[str, float]]:
        wanted = set(ids)
        flat, decayed = await self.similar_both(recent)
        return (
            {d: w for d, w in flat.items() if d in wanted},
            {d: w for d, w in decayed.items() if d in wanted},
        )

    async def lookup(
        self,
        ids: Sequence[str],
        *,
        recent: Sequence[str] = (),
        similar_from: Sequence[str] = (),
        graph_weights: Mapping[str, float] | None = None,
        packed: Mapping[str, str] | None = None,
        owners: Mapping[str, str] | None = None,
        inbox: Inbox | None = None,
        mutual_weights: Mapping[str, float] | None = None,
    ) -> Features:
        """Features aligned with ``ids`` (zeros where something is missing).

        ``graph_weights``: the edge weights from ``recent`` already read by the caller (the
        graph candidate source reads the same edges); the graph lookup is then skipped.
        ``packed``: id -> the packed vectors the candidate hits carried; only the other ids'
        vectors are looked up. ``owners``: id -> member for the member candidates (profiles):
        their tastes are looked up for the reciprocal estimate; ``inbox`` (the viewer's likers
        and matches) and ``mutual_weights`` (co-engagement from the matched profiles) were
        read by the query hydrators.
        """
        ids = [str(i) for i in ids]
        uniq = list(dict.fromkeys(ids))
        carried = self._unpack(packed or {}, uniq)
        fetch = [i for i in uniq if i not in carried]
        owners = dict(owners or {})
        vecs, expo, inbound, graph, tastes, similar = await asyncio.gather(
            self._vectors(fetch),
            self.counters.read(uniq, realtime=False),
            self._inbound(uniq),
            _given(graph_weights) if graph_weights is not None else self._graph(list(recent), uniq),
            self._tastes(sorted(set(owners.values()))) if owners else _given({}),
            self._similar(similar_from, uniq),
        )
        vecs.update(carried)
        n, d, b = len(ids), self.settings.embedding_dim, self.settings.behaviour_dim
        content, behaviour = np.zeros((n, d)), np.zeros((n, b))
        for r, i in enumerate(ids):
            cv, bv = vecs.get(i, (None, None))
            if cv is not None and len(cv) == d:
                content[r] = cv
            if bv is not None and len(bv) == b:
                behaviour[r] = bv
        bnorm = np.linalg.norm(behaviour, axis=1)
        for M in (content, behaviour):
            norms = np.linalg.norm(M, axis=1, keepdims=True)
            np.divide(M, norms, out=M, where=norms > 0)
        feats = Features(
            content=content,
            behaviour=behaviour,
            exposure=np.array([float(expo[i].count) for i in ids]),
            inbound=np.array([float(inbound.get(i, 0)) for i in ids]),
            graph=np.array([float(graph.get(i, 0.0)) for i in ids]),
            behaviour_norm=bnorm,
            trending=(trend := np.array([expo[i].trend for i in ids])),
            like_rate=rate_per_day(trend, self.settings.trending_half_life_hours),
            paced_exposure=np.array([expo[i].paced for i in ids]),
            item_sim=np.array([float(similar[0].get(i, 0.0)) for i in ids]),
            item_sim_recent=np.array([float(similar[1].get(i, 0.0)) for i in ids]),
        )
        return _two_sided(feats, ids, owners, tastes, inbox, mutual_weights, d) if owners else feats

    async def viewer(
        self, user_state: UserState | None, profile_id: str | None = None
    ) -> ViewerFeatures:
        """The lookups of a request that need no candidate (module docstring), concurrently."""
        positives = user_state.recent_positive_ids if user_state is not None else []
        profile, (similar, recent), vector = await asyncio.gather(
            self.profile(positives),
            self.similar_both(positives),
            self.profile_vector(profile_id),
        )
        return ViewerFeatures(profile, similar, vector, recent)

    async def for_batch(
        self,
        batch: CandidateBatch,
        user_state: UserState | None = None,
        graph_weights: Mapping[str, float] | None = None,
        *,
        inbox: Inbox | None = None,
        mutual_weights: Mapping[str, float] | None = None,
        viewer: Awaitable[ViewerFeatures] | None = None,
    ) -> Features:
        """Features of ``batch``: the per-candidate lookups, concurrently with ``viewer`` (the
        viewer's side, already started by the caller; None: looked up here, without the
        profile vector)."""
        positives = user_state.recent_positive_ids if user_state is not None else []
        members = batch.members
        owners = {
            i: str(batch.owners[batch.owner[r]])
            for r, i in enumerate(batch.ids)
            if members[r] and batch.owner[r] >= 0
        }
        feats, side = await asyncio.gather(
            self.lookup(
                batch.ids,
                recent=positives[:RECENT_FANOUT],
                graph_weights=graph_weights,
                packed=batch.packed,
                owners=owners,
                inbox=inbox,
                mutual_weights=mutual_weights,
            ),
            viewer if viewer is not None else self.viewer(user_state),
        )
        item_sim = np.array([float(side.similar.get(i, 0.0)) for i in batch.ids])
        recent = np.array([float(side.similar_recent.get(i, 0.0)) for i in batch.ids])
        return replace(
            feats,
            item_sim=item_sim,
            item_sim_recent=recent,
            affinity=profile_features(batch, side.profile),
        )

    @staticmethod
    def context(user_state: UserState | None, **kw: Any) -> RerankContext:
        """A :class:`RerankContext` from a ``UserState`` (vector, behaviour, fatigue, bans);
        ``kw`` adds the rest (``k``, ``viewer_profile``, ``pacing_budget``, ...)."""
        if user_state is None:
            return RerankContext(**kw)
        return RerankContext(
            user_vector=np.asarray(user_state.vector) if user_state.vector else None,
            behaviour_vector=np.asarray(user_state.behaviour) if user_state.behaviour else None,
            fatigue=dict(user_state.fatigue),
            bans=frozenset(user_state.blocked) | frozenset(kw.pop("bans", ())),
            history=len(user_state.positives),
            **kw,
        )


async def _given(value: Any) -> Any:
    return value


def _two_sided(
    feats: Features,
    ids: list[str],
    owners: Mapping[str, str],
    tastes: Mapping[str, tuple[Any, int, int]],
    inbox: Inbox | None,
    mutual: Mapping[str, float] | None,
    dim: int,
) -> Features:
    """The member candidates' two-sided features (rows of other candidates stay zero)."""
    n = len(ids)
    taste = np.zeros((n, dim))
    likes, passes, liked, mut = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    likers = inbox.likers if inbox is not None else {}
    for r, i in enumerate(ids):
        owner = owners.get(i)
        if owner is None:
            continue
        v, likes[r], passes[r] = tastes.get(owner, (None, 0, 0))
        if v is not None and len(v) == dim:
            taste[r] = v
        liked[r] = float(owner in likers)
        mut[r] = float((mutual or {}).get(i, 0.0))
    return replace(
        feats, taste=taste, likes_sent=likes, passes_sent=passes, liked_viewer=liked, mutual=mut
    )
