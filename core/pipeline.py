"""The served pipeline: user context → candidates in OpenSearch → features → rerank.

:class:`Discovery` is what the API, the CLI and the offline evaluator call, so what is
evaluated is exactly what is served. Each request makes a bounded number of round trips:
user + user state (MongoDB, concurrently), one ``_msearch`` (candidates), one batched feature
lookup (vectors ``mget`` + exposure counts + graph + inbound, concurrently); reranking is
in-process over arrays.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opendisco._exceptions import InvalidInput, NotFound, StoreBackendError
from opendisco._settings import Settings

if TYPE_CHECKING:
    from opensearchpy import AsyncOpenSearch

    from opendisco.ingest.events import EventProcessor, EventsResult
    from opendisco.ingest.user_state import UserState
    from opendisco.queries import CandidateRequest
    from opendisco.rerank import RerankConfig

__all__ = ["CandidatePlan", "Discovery", "Recommendation", "Recommendations", "candidate_k"]

#: candidates fetched per requested item (the reranker needs room to diversify and balance)
CANDIDATE_FACTOR = 5
MIN_CANDIDATES = 100
MAX_CANDIDATES = 500
#: co-engaged neighbours handed to the graph candidate source (by raw weight; the engine
#: re-scores them, e.g. with the template's popularity damping, and keeps its top k)
GRAPH_NEIGHBOURS = 300


@dataclass
class Recommendation:
    id: str
    score: float
    sources: dict[str, float]
    item: dict[str, Any]
    trace: list[dict[str, Any]] | None = None
    explore: bool = False


@dataclass
class Recommendations:
    items: list[Recommendation]
    degraded: bool
    template_version: str
    surface: str
    explain: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: the candidate stage (``opendisco.queries.CandidateSet``), kept only when explaining
    candidate_set: Any = field(default=None, repr=False)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.items]


@dataclass
class CandidatePlan:
    """Stage one of a request: the candidate request and the context the rerank reuses."""

    requested_surface: str  # what the caller asked for (``request.surface`` may differ)
    request: CandidateRequest
    state: UserState | None
    graph_weights: dict[str, float] | None  # the user's co-engagement edges (read once)
    timings_ms: dict[str, float] = field(default_factory=dict)


def candidate_k(k: int) -> int:
    return max(MIN_CANDIDATES, min(MAX_CANDIDATES, k * CANDIDATE_FACTOR))


class Discovery:
    """Recommendations, similar items, search and events over one OpenSearch + MongoDB pair."""

    def __init__(
        self,
        settings: Settings,
        os_client: AsyncOpenSearch,
        db: Any,
        *,
        params: Mapping[str, Any] | None = None,
        rerank_config: RerankConfig | Mapping[str, Any] | None = None,
        model: Any | None = None,
    ) -> None:
        from opendisco.ingest.user_state import UserStateStore
        from opendisco.queries import template_version
        from opendisco.rerank import FeatureStore, RerankConfig, Reranker

        self.settings = settings
        self.os = os_client
        self.db = db
        self.params = dict(params or {})
        if rerank_config is None:
            config = RerankConfig()
        elif isinstance(rerank_config, RerankConfig):
            config = rerank_config
        else:
            config = RerankConfig.from_config(dict(rerank_config))
        self.reranker = Reranker(config)
        self.features = FeatureStore(settings, os_client, db)
        self.states = UserStateStore(db)
        self._model = model
        self._events: EventProcessor | None = None
        self._events_lock = asyncio.Lock()
        digest = hashlib.sha256(
            json.dumps(
                {"params": self.params, "rerank": config.get_config()}, sort_keys=True, default=str
            ).encode()
        ).hexdigest()[:8]
        self.template_version = f"{template_version()}+{digest}"

    # -- context ------------------------------------------------------------------------
    async def _user(self, user_id: str | None) -> tuple[dict[str, Any] | None, UserState | None]:
        if not user_id:
            return None, None
        from pymongo.errors import PyMongoError

        try:
            user, state = await asyncio.gather(
                self.db["users"].find_one({"_id": user_id}), self.states.get(user_id)
            )
        except PyMongoError as exc:
            raise StoreBackendError(f"loading user {user_id!r} failed: {exc}") from exc
        return user, state

    async def warmup(self) -> None:
        """Load the query encoder now (seconds on CPU) rather than inside a request deadline."""
        await self._encode("warm up")

    async def _encode(self, text: str) -> list[float]:
        from opendisco import clients

        if self._model is None:
            self._model = await asyncio.to_thread(clients.load_model, self.settings)
        vec = await asyncio.to_thread(
            self._model.encode, [text], normalize_embeddings=True, show_progress_bar=False
        )
        return [float(x) for x in vec[0]]

    # -- the pipeline -------------------------------------------------------------------
    async def plan(
        self,
        surface: str,
        k: int,
        *,
        user_id: str | None,
        exclude: Iterable[str] = (),
        explain: bool = False,
        **request: Any,
    ) -> CandidatePlan:
        """The candidate request a call would send (user context, exclusions, graph
        neighbours, template overrides) — stage one of every request, and what benchmarks
        replay as the bare engine query."""
        from opendisco.queries import request_for_user

        if not 1 <= k <= MAX_CANDIDATES:
            raise InvalidInput(f"k must be within 1..{MAX_CANDIDATES}")
        t0 = time.perf_counter()
        user, state = await self._user(user_id)
        user_ms = (time.perf_counter() - t0) * 1e3
        # one definition of "context → request" (queries.request_for_user): a for_you request
        # without history becomes cold_start; seen, blocked and interacted ids are excluded
        req = request_for_user(
            user,
            state.to_doc() if state is not None else None,
            surface=None if surface == "for_you" else surface,
            k=candidate_k(k),
            explain=explain,
            **request,
        )
        req.exclude_ids = list(dict.fromkeys([*req.exclude_ids, *exclude]))
        req.params = self._params_for(req.surface)
        graph_weights: dict[str, float] | None = None
        if req.surface == "for_you" and state is not None and state.recent_positive_ids:
            graph_params, graph_weights = await self._graph(state)
            req.params.update(graph_params)
        graph_ms = (time.perf_counter() - t0) * 1e3 - user_ms
        timings = {"user_ms": user_ms, "graph_ms": graph_ms}
        return CandidatePlan(surface, req, state, graph_weights, timings)

    async def _run(self, plan: CandidatePlan, k: int) -> Recommendations:
        """Stages two to four of a planned request: candidates, features, rerank."""
        from opendisco.queries import generate_candidates
        from opendisco.rerank import CandidateBatch, FeatureStore

        req, state, graph_weights = plan.request, plan.state, plan.graph_weights
        explain, effective = req.explain, req.surface
        timings: dict[str, float] = dict(plan.timings_ms)
        t1 = time.perf_counter()
        cs = await generate_candidates(self.os, self.settings, req)
        timings["candidates_ms"] = (time.perf_counter() - t1) * 1e3
        batch = CandidateBatch.from_candidates(cs.candidates, now=req.now)
        t2 = time.perf_counter()
        feats = await self.features.for_batch(batch, state, graph_weights)
        timings["features_ms"] = (time.perf_counter() - t2) * 1e3
        t3 = time.perf_counter()
        result = self.reranker.run(batch, feats, FeatureStore.context(state, k=k), timed=explain)
        timings["rerank_ms"] = (time.perf_counter() - t3) * 1e3
        by_id = {c.id: c for c in cs.candidates}
        top = result.order[:k].tolist()
        items = []
        for pos, row in enumerate(top):
            cid = batch.ids[row]
            cand = by_id[cid]
            items.append(
                Recommendation(
                    id=cid,
                    score=float(result.scores[pos]),
                    sources=dict(cand.sources),
                    item=dict(cand.item),
                    trace=result.trace.for_item(cid) if explain else None,
                    explore=cand.explore,
                )
            )
        timings["total_ms"] = sum(plan.timings_ms.values()) + (time.perf_counter() - t1) * 1e3
        explained = None
        if explain:
            explained = {
                "surface": effective,
                "requested_surface": plan.requested_surface,
                "template_version": cs.template_version,
                "rendered": cs.rendered,
                "took_ms": cs.took_ms,
                "source_took_ms": cs.source_took,
                "source_errors": cs.errors,
                "skipped_sources": cs.skipped,
                "candidates": len(cs.candidates),
                "rerank": result.trace.to_dict([r.id for r in items]),
                "timings_ms": {k2: round(v, 2) for k2, v in timings.items()},
            }
        return Recommendations(
            items=items,
            degraded=cs.degraded,
            template_version=f"{cs.template_version}+{self.template_version.rsplit('+', 1)[1]}",
            surface=effective,
            explain=explained,
            timings_ms=timings,
            candidate_set=cs if explain else None,
        )

    async def _graph(self, state: UserState) -> tuple[dict[str, Any], dict[str, float]]:
        """Edges from the user's recent positives, read once: the graph candidate source's
        parameters (heaviest unseen neighbours) and the weights the graph feature uses."""
        from pymongo.errors import PyMongoError

        from opendisco.ingest.graph import RECENT_FANOUT, ItemGraph, top_neighbours

        recent = state.recent_positive_ids[:RECENT_FANOUT]
        try:
            weights = await ItemGraph(self.db).weights(recent)
        except PyMongoError as exc:
            raise StoreBackendError(f"graph neighbours lookup failed: {exc}") from exc
        skip = [*recent, *state.exclude_ids]
        neighbours = [(i, w) for i, w in top_neighbours(weights, GRAPH_NEIGHBOURS, skip) if w > 0]
        if not neighbours:
            return {}, weights
        params = {
            "graph_ids": [i for i, _ in neighbours],
            "graph_weights": [float(w) for _, w in neighbours],
        }
        return params, weights

    def _params_for(self, surface: str) -> dict[str, Any]:
        """Template overrides: ``{"param": v}`` for every surface or ``{"<surface>": {...}}``."""
        from opendisco.queries import load

        specs = load(surface).specs
        out = {k: v for k, v in self.params.items() if k in specs}
        nested = self.params.get(surface)
        if isinstance(nested, Mapping):
            out.update({k: v for k, v in nested.items() if k in specs})
        return out

    # -- surfaces -------------------------------------------------------------------------
    async def recommend(
        self,
        user_id: str,
        surface: str = "for_you",
        k: int = 20,
        exclude: Sequence[str] = (),
        explain: bool = False,
    ) -> Recommendations:
        if surface in {"similar", "search"}:
            raise InvalidInput(f"surface {surface!r} needs an item or a query, not a user")
        plan = await self.plan(surface, k, user_id=user_id, exclude=exclude, explain=explain)
        return await self._run(plan, k)

    async def similar(
        self,
        item_id: str,
        k: int = 20,
        user_id: str | None = None,
        explain: bool = False,
    ) -> Recommendations:
        plan = await self.plan(
            "similar", k, user_id=user_id, exclude=(item_id,), explain=explain, item_id=item_id
        )
        return await self._run(plan, k)

    async def search(
        self, q: str, user_id: str | None = None, k: int = 20, explain: bool = False
    ) -> Recommendations:
        if not q.strip():
            raise InvalidInput("q must not be blank")
        vector = await self._encode(q)
        plan = await self.plan(
            "search", k, user_id=user_id, explain=explain, query_text=q, query_vector=vector
        )
        return await self._run(plan, k)

    async def trending(self, surface: str = "for_you", k: int = 50) -> Recommendations:
        """Non-personal list per surface (the API's degraded fallback refreshes from it)."""
        return await self._run(await self.plan("trending", k, user_id=None), k)

    # -- events -----------------------------------------------------------------------------
    async def record_events(
        self, events: Sequence[Mapping[str, Any]], now: datetime | None = None
    ) -> EventsResult:
        if self._events is None:
            async with self._events_lock:
                if self._events is None:
                    from opendisco.ingest.events import EventProcessor

                    proc = EventProcessor(self.settings, self.db, self.os)
                    await proc.ensure()
                    self._events = proc
        assert self._events is not None
        return await self._events.apply(list(events), now=now)

    async def item(self, item_id: str) -> dict[str, Any]:
        from opensearchpy.exceptions import NotFoundError

        from opendisco.ingest import PACKED_FIELD

        try:
            doc = await self.os.get(
                index=self.settings.index_alias,
                id=item_id,
                params={"_source_excludes": f"embedding,behaviour,{PACKED_FIELD}"},
            )
        except NotFoundError as exc:
            raise NotFound(f"item {item_id!r} not found") from exc
        return dict(doc["_source"])
