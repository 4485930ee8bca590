"""The served pipeline: member context → candidates in OpenSearch → filters → features → rerank.

:class:`Discovery` is what the API, the CLI and the offline evaluator call, so what is
evaluated is exactly what is served. It is assembled from named parts (``Parts``: query
hydrators, candidate sources, filters, feature hydrators, side effects), a
:class:`~opendisco.rerank.Reranker` (scorer + named steps) and the serving
:class:`~opendisco.serving.Artifacts` (tuned params, trained model);
:func:`~opendisco.serving.default_parts` (``_assembly``) is the one default assembly. Each
request makes a bounded number of sequential round trips: the member context (users document,
user state, blocks and inbox: MongoDB point reads, concurrently), the graph edges (recent
positives' and matched profiles' rows in one ``find``), one ``_msearch`` (candidates) with
the viewer's own feature lookups running alongside (:meth:`FeatureHydrator.prepare`), one
batched per-candidate feature lookup; reranking is in-process over arrays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from opensearchpy import AsyncOpenSearch

from opendisco._backend import backend_errors
from opendisco._domain import USER_SURFACES, Surface
from opendisco._exceptions import BackendError, InvalidInput
from opendisco._settings import Settings
from opendisco.ingest import PACKED_FIELD
from opendisco.queries import CandidateSet, template_version
from opendisco.rerank import CandidateBatch, Features, FeatureStore, Reranker
from opendisco.signals import (
    BlockStore,
    EventsResult,
    ExposureStore,
    PacingController,
    ServedLog,
    SignalCopies,
    UserStateStore,
)

from ._artifacts import Artifacts
from ._assembly import default_parts
from ._caps import ExposureCaps
from ._encoder import QueryEncoder
from ._explore import EXPLORED_SURFACES, Explorer
from ._fill import FillSource, fill_page, filled_rows
from ._filters import HardRules
from ._page import StoreRecheck, pick_page
from ._reads import read_member
from ._stages import LogServed, Parts, request_ranking, run_sources, served_list
from ._tasks import settle
from ._types import MAX_K, CandidatePlan, Recommendation, Recommendations, explained
from ._writes import Writes

if TYPE_CHECKING:  # torch: loaded on the first query encoding, not on import
    from sentence_transformers import SentenceTransformer

__all__ = ["Discovery"]

log = logging.getLogger("opendisco.serving")


class Discovery:
    """Recommendations, similar items, search and events over one OpenSearch + MongoDB pair."""

    def __init__(
        self,
        settings: Settings,
        os_client: AsyncOpenSearch,
        db: Any,
        *,
        artifacts: Artifacts | None = None,
        parts: Parts | None = None,
        model: SentenceTransformer | None = None,
        explorer: Explorer | None = None,
        fill: FillSource | None = None,
    ) -> None:
        self.settings = settings
        self.os = os_client
        self.db = db
        self.artifacts = artifacts if artifacts is not None else Artifacts.from_settings(settings)
        self.reranker = Reranker(self.artifacts.rerank, self.artifacts.scorer)
        self.exposure = ExposureStore(os_client, settings)
        self.writes = Writes(settings, os_client, db, self.exposure)
        self.served = self.writes.served  # served impressions not flushed yet
        self.copies = SignalCopies.from_settings(self.exposure, db, settings, self.served)
        self.features = FeatureStore(settings, os_client, db, copies=self.copies)
        self.states = UserStateStore(db)
        self.pacing = PacingController(settings, db, self.exposure)
        #: caps this process knows reached (``_caps``; the API sets ``count``: pages counted)
        self.caps = ExposureCaps(self.copies.exposure)
        self.blocks = BlockStore(db)
        self.parts = (
            parts
            if parts is not None
            else default_parts(
                settings,
                os_client,
                db,
                self.features,
                self.artifacts.params,
                self.artifacts.templates,
                pacing=self.pacing,
            )
        )
        self.explorer = explorer if explorer is not None else Explorer.from_settings(settings)
        self.recheck = StoreRecheck.from_settings(db, settings)  # the page re-read (_page)
        self.fill = fill  # a page a failed source left short is filled from it (_fill)
        self.encoder = QueryEncoder(settings, model)  # the search surface's
        #: the templates and the serving artifacts (params file, model) this pipeline serves
        self.version = f"{template_version()}+{self.artifacts.name}"

    # -- start-up -----------------------------------------------------------------------
    async def ensure(self) -> None:
        """Once per process: the exposure counters index the in-engine cap reads."""
        await self.exposure.ensure_once()

    async def warmup(self) -> None:
        """Start loading the query encoder (in the background: :mod:`._encoder`) and ensure
        indices now, not inside a request deadline (a backend that is down is not fatal here:
        requests retry :meth:`ensure` and degrade)."""
        self.encoder.start()
        try:
            await asyncio.wait_for(self.ensure(), self.settings.opensearch_timeout)
        except (BackendError, TimeoutError) as exc:
            log.warning("start-up: exposure counters index not ensured yet: %r", exc)

    # -- the pipeline -------------------------------------------------------------------
    async def plan(
        self,
        surface: str,
        k: int,
        *,
        user_id: str | None = None,
        item_id: str | None = None,
        query: str | None = None,
        exclude: Iterable[str] = (),
        explain: bool = False,
        request_id: str | None = None,
    ) -> CandidatePlan:
        """Stage one (query hydration): the checked request and the candidate request it
        sends — member context, exclusions, graph neighbours, template overrides. Benchmarks
        replay ``plan.request`` as the bare engine query; ``opendisco recommend --candidates``
        shows :meth:`candidates` of it."""
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be within 1..{MAX_K}")
        extra: dict[str, Any] = {}
        if surface == Surface.similar:
            if not item_id:
                raise InvalidInput("similar needs an item id")
            extra["item_id"] = item_id
            exclude = (*exclude, item_id)
        elif surface == Surface.search:
            if not query or not query.strip():
                raise InvalidInput("q must not be blank")
            extra.update(query_text=query, query_vector=await self.encoder.encode(query))
        elif surface not in USER_SURFACES:
            raise InvalidInput(f"unknown surface {surface!r}")
        plan = CandidatePlan(surface, k, user_id, tuple(exclude), explain, extra)
        if request_id:
            plan.request_id = request_id
        plan.rules = HardRules.anonymous(plan.exclude)  # a member context replaces them
        await self.ensure()  # the counters index live trending reads (a 404 is a failed read)
        for hydrator in self.parts.query_hydrators:
            t0 = time.perf_counter()
            await hydrator.hydrate(plan)
            plan.timings_ms[f"{hydrator.name}_ms"] = (time.perf_counter() - t0) * 1e3
        return plan

    async def candidates(self, plan: CandidatePlan) -> CandidateSet:
        """Stage two: every candidate source, then the filters."""
        await self.ensure()
        cs, ms = await run_sources(self.parts.sources, plan)
        plan.timings_ms["candidates_ms"] = ms
        self.caps.apply(plan, cs.candidates)  # the caps this process knows reached
        for f in self.parts.filters:
            cs.candidates = f.keep(plan, cs.candidates)
        return cs

    async def run(self, plan: CandidatePlan) -> Recommendations:
        """Stages two to five of a planned request: candidates, filters, features, rerank,
        side effects."""
        explain, k = plan.request.explain, plan.k
        hydrators = self.parts.feature_hydrators
        prepared = [h.prepare(plan) for h in hydrators]  # run while the engine answers
        try:
            cs = await self.candidates(plan)
            filled = await fill_page(plan, cs, self.fill, self.caps, self.parts.filters)
            if not cs.candidates:  # nothing eligible: an answer (empty), not a failure
                empty = Recommendations.empty(plan, cs, (plan.artifacts or self.artifacts).name)
                # logged as the pipeline's (the API logged it as the fallback's)
                nothing = np.zeros(0, dtype=np.int64)
                served = served_list(plan, cs, (), None, nothing, None, empty.version)
                empty = replace(empty, served=served)
                for effect in self.parts.side_effects:
                    effect.after(plan, empty)
                return empty
            t1 = time.perf_counter()
            batch = CandidateBatch.from_candidates(cs.candidates, now=plan.request.now)
            feats: Features | None = None
            for hydrator, ready in zip(hydrators, prepared, strict=True):
                feats = await hydrator.features(plan, batch, feats, ready)
            assert feats is not None  # Parts requires a feature hydrator
            plan.timings_ms["features_ms"] = (time.perf_counter() - t1) * 1e3
        finally:
            settle(prepared)
        t2 = time.perf_counter()
        pacing = plan.pacing
        ctx = FeatureStore.context(
            plan.state,
            k=k,
            viewer_profile=plan.viewer_profile,
            anonymous=not plan.user_id,
            pacing_budget=pacing.impressions if pacing is not None else None,
            pacing_mean_inbound=pacing.mean_inbound if pacing is not None else None,
            pacing_attention_cap=pacing.attention_cap if pacing is not None else None,
        )
        artifacts = plan.artifacts or self.artifacts
        result = request_ranking(plan, self.artifacts, self.reranker).run(
            batch, feats, ctx, timed=explain
        )
        explorable = plan.request.surface in EXPLORED_SURFACES and not ctx.pins
        explorer = self.explorer if plan.user_id and explorable and not explain else None
        plan.timings_ms["rerank_ms"] = (time.perf_counter() - t2) * 1e3
        t3 = time.perf_counter()
        # checked and counted after the last await (once per request id and list)
        caps = self.caps.page(cs.candidates, plan.request_id)
        page = await pick_page(result, k, plan.rules, explorer, self.recheck, caps)
        # nothing below awaits: the page counted (``page.counted``) is the one answered
        rows, scores, exploration = page.rows, page.scores, page.exploration
        for rule, n in page.dropped.items():  # added to what the filters counted
            plan.filtered[rule] = plan.filtered.get(rule, 0) + n
        plan.timings_ms["recheck_ms"] = (time.perf_counter() - t3) * 1e3
        by_id = {c.id: c for c in cs.candidates}
        items = []
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            cand = by_id[batch.ids[row]]
            items.append(
                Recommendation(
                    id=cand.id,
                    score=float(score),
                    sources=dict(cand.sources),
                    item=dict(cand.item),
                    trace=result.trace.for_item(cand.id) if explain else None,
                    explore=cand.explore,
                )
            )
        timings = dict(plan.timings_ms)
        timings["total_ms"] = sum(plan.timings_ms.values())
        version = f"{cs.template_version}+{artifacts.name}"
        served = served_list(plan, cs, batch.ids, result.trace.X, rows, exploration, version)
        served = replace(served, filled=filled_rows(batch.ids, filled))
        recs = Recommendations(
            items=items,
            degraded=cs.degraded,
            source_errors=dict(cs.errors),
            version=version,
            surface=plan.request.surface,
            explain=explained(plan, cs, result.trace, items, timings) if explain else None,
            timings_ms=timings,
            candidate_set=cs if explain else None,
            experiments=plan.experiments,
            request_id=plan.request_id,
            explored=exploration is not None,
            served=served,
            rechecked=dict(page.dropped),
            counted=page.counted,
        )
        for effect in self.parts.side_effects:
            effect.after(plan, recs)
        return recs

    # -- surfaces -------------------------------------------------------------------------
    async def recommend(
        self,
        user_id: str,
        surface: str = Surface.for_you,
        k: int = 20,
        exclude: Sequence[str] = (),
        explain: bool = False,
        request_id: str | None = None,
    ) -> Recommendations:
        if surface not in USER_SURFACES:
            raise InvalidInput(f"surface {surface!r} needs an item or a query, not a member")
        plan = await self.plan(
            surface, k, user_id=user_id, exclude=exclude, explain=explain, request_id=request_id
        )
        return await self.run(plan)

    async def similar(
        self,
        item_id: str,
        k: int = 20,
        user_id: str | None = None,
        explain: bool = False,
        request_id: str | None = None,
    ) -> Recommendations:
        return await self.run(
            await self.plan(
                Surface.similar,
                k,
                user_id=user_id,
                item_id=item_id,
                explain=explain,
                request_id=request_id,
            )
        )

    async def search(
        self,
        q: str,
        user_id: str | None = None,
        k: int = 20,
        explain: bool = False,
        request_id: str | None = None,
    ) -> Recommendations:
        return await self.run(
            await self.plan(
                Surface.search, k, user_id=user_id, query=q, explain=explain, request_id=request_id
            )
        )

    async def trending(self, k: int = 50, request_id: str | None = None) -> Recommendations:
        """The non-personal list (the same for everyone)."""
        return await self.run(await self.plan(Surface.trending, k, request_id=request_id))

    async def recover_events_forever(self) -> None:
        """The events' recovery sweep, run in the background by each API process: events a
        dead holder left claimed are applied seconds after a start, then every
        ``events_recover_every_s`` (``EventProcessor.recover_forever``)."""
        await self.writes.recover_forever()

    async def drain(self) -> None:
        """Finish queued work before the clients close (shutdown, an evaluation's end): pacing,
        events, served impressions, side effects — side by side, so a hung engine write does
        not hold back the served-list log (a store write); then the first failure is raised."""
        effects = (e.drain() for e in self.parts.side_effects)
        done = await asyncio.gather(
            self.pacing.settle(), self.writes.drain(), *effects, return_exceptions=True
        )
        if failed := [o for o in done if isinstance(o, BaseException)]:
            raise failed[0]

    @property
    def served_log(self) -> ServedLog | None:
        """The served-list log of the default assembly (None when logging is off)."""
        for effect in self.parts.side_effects:
            if isinstance(effect, LogServed):
                return effect.log
        return None

    async def rules_for(self, user_id: str | None, exclude: Iterable[str] = ()) -> HardRules:
        """The hard rules of a viewer, read the way a served request reads them (what the
        degraded fallback filters with); anonymous rules without a user id."""
        if not user_id:
            return HardRules.anonymous(exclude)
        user, state, blocks = await read_member(self.db, self.states, self.blocks, user_id)
        return HardRules.for_member(user_id, user, state, blocks, exclude=exclude)

    # -- events (the write side: ``_writes``) ----------------------------------------------
    async def record_events(
        self, events: Sequence[Mapping[str, Any]], now: datetime | None = None
    ) -> EventsResult:
        """Apply an event batch (to its end, even when the caller gives up)."""
        return await self.writes.events(events, now=now)

    def record_served(self, items: Sequence[Mapping[str, Any]], rid: str | None = None) -> None:
        """Count a list shown toward its profiles' exposure (no I/O; once per ``rid`` and list)."""
        self.writes.shown(items, rid)

    async def item(self, item_id: str) -> dict[str, Any]:
        with backend_errors(
            f"item {item_id!r} lookup failed", not_found=f"item {item_id!r} not found"
        ):
            doc = await self.os.get(
                index=self.settings.index_alias,
                id=item_id,
                params={"_source_excludes": f"embedding,behaviour,{PACKED_FIELD}"},
            )
        return dict(doc["_source"])
