"""The named parts a served pipeline is assembled from, and the default ones.

One request runs through these stage kinds, in order (home-mixer's product pipeline)::

    query hydrators   member context: users document + UserState + blocks + inbox (one round
                      trip), co-engagement neighbours (one round trip)
    candidate sources one _msearch over the surface's template (several sources fused in it)
    filters           hard rules re-checked on what the engine returned
    feature hydrators the reranker's per-candidate features (vectors, counters, graph:
                      ``_features.StoreFeatures``)
    scorer + steps    the Reranker (named pure steps over arrays)
    side effects      after the answer: impression logging and the like (never on the hot path)

Each kind is a small protocol; :func:`~opendisco.serving.default_parts` builds the default
ones. A candidate source fails open: when one of several sources fails the answer is
``degraded`` from the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from opensearchpy import AsyncOpenSearch

from opendisco._domain import Surface
from opendisco._exceptions import ConfigError
from opendisco._published import Followed
from opendisco._settings import Settings
from opendisco.queries import (
    REQUEST_PARAMS,
    Candidate,
    CandidateSet,
    Template,
    generate_candidates,
    load,
    request_for_user,
)
from opendisco.rerank import FEATURE_NAMES, Reranker
from opendisco.signals import (
    RECENT_FANOUT,
    BlockStore,
    ItemGraph,
    ServedList,
    ServedLog,
    UserGraph,
    UserStateStore,
    as_served,
    top_neighbours,
)

from ._artifacts import Artifacts
from ._explore import Exploration
from ._features import FeatureHydrator
from ._filters import HIT_FIELDS, HardRules
from ._reads import read_member
from ._types import CandidatePlan, Ranking, Recommendations, candidate_k

__all__ = [
    "GRAPH_NEIGHBOURS",
    "CandidateFilter",
    "CandidateSource",
    "GraphNeighbours",
    "LogServed",
    "MemberContext",
    "Parts",
    "QueryHydrator",
    "RequestBuilder",
    "SideEffect",
    "TemplateSource",
    "params_for",
    "request_ranking",
    "served_list",
]

#: co-engaged neighbours handed to the graph candidate source (by raw weight; the engine
#: re-scores them, e.g. with the template's popularity damping, and keeps its top k)
GRAPH_NEIGHBOURS = 300


class QueryHydrator(Protocol):
    """Adds member context to a plan before candidates are generated."""

    name: str

    async def hydrate(self, plan: CandidatePlan) -> None: ...


class CandidateSource(Protocol):
    name: str

    async def candidates(self, plan: CandidatePlan) -> CandidateSet: ...


class CandidateFilter(Protocol):
    """Drops candidates a hard rule forbids (pure over the plan and the candidates)."""

    name: str

    def keep(self, plan: CandidatePlan, candidates: Sequence[Candidate]) -> list[Candidate]: ...


class SideEffect(Protocol):
    """Runs after an answer is built; must not block (queue and return). ``drain`` finishes
    what was queued (shutdown, the end of an evaluation)."""

    name: str

    def after(self, plan: CandidatePlan, recs: Recommendations) -> None: ...

    async def drain(self) -> None: ...


def params_for(
    params: Mapping[str, Any], surface: str, template: Template | None = None
) -> dict[str, Any]:
    """Template overrides for ``surface``: ``{"param": v}`` for every surface that declares
    ``param``, then ``{"<surface>": {...}}`` on top (declared by ``template`` when given).
    Never a parameter every request sets (``REQUEST_PARAMS``: the hard rules), whatever the
    overrides' origin (params file, draft, experiment arm)."""
    specs = (template or load(surface)).specs
    nested = params.get(surface)
    merged = {**params, **(nested if isinstance(nested, Mapping) else {})}
    return {k: v for k, v in merged.items() if k in specs and k not in REQUEST_PARAMS}


@dataclass
class MemberContext:
    """The member's ``users`` document, :class:`UserState` and blocks, and the
    :class:`HardRules` built from them (with the caller's exclusions); with ``users``, the
    member's inbox (likers, matches: :class:`~opendisco.serving.MutualLikes`) too. All of
    them are point reads by the member's id, issued together: one round trip, read fresh
    every request. When any of them fails the plan fails (nothing is set): the request
    degrades to the fallback, which reads the rules again (read, they are kept for it:
    :class:`RequestReads`).

    With ``behaviour`` (the served behaviour model, followed), a behaviour vector folded from
    another model is left out of the state the request uses (``signals.as_served``)."""

    db: Any
    states: UserStateStore
    blocks: BlockStore
    users: UserGraph | None = None
    behaviour: Followed | None = None
    name: str = "member"

    async def hydrate(self, plan: CandidatePlan) -> None:
        if not plan.user_id:
            plan.rules = HardRules.anonymous(plan.exclude)
            return
        member = read_member(self.db, self.states, self.blocks, plan.user_id)
        if self.users is None:
            (plan.user, plan.state, plan.blocks), model = await asyncio.gather(
                member, self._behaviour_model()
            )
        else:
            (plan.user, plan.state, plan.blocks), plan.inbox, model = await asyncio.gather(
                member, self.users.inbox(plan.user_id), self._behaviour_model()
            )
        plan.state = as_served(plan.state, model)
        plan.rules = HardRules.for_member(
            plan.user_id, plan.user, plan.state, plan.blocks, exclude=plan.exclude
        )

    async def _behaviour_model(self) -> str | None:
        """The served behaviour model's version (its pointer read at most every 30 s)."""
        return await self.behaviour.version() if self.behaviour is not None else None


@dataclass
class RequestBuilder:
    """The candidate request from the member context (``queries.request_for_user``: a
    ``for_you`` request without history becomes ``cold_start``; vectors, interests,
    location), the caller's exclusions, the served template overrides and the served template
    version of the request's surface (``templates``; None: the shipped file), and on top of
    them the hard rules' parameters (:meth:`HardRules.engine_params`: exclusions, blocks both
    ways, two-sided eligibility), which no tuned parameter can override."""

    params: Mapping[str, Any]
    templates: Mapping[str, Template] = field(default_factory=dict)
    name: str = "request"

    async def hydrate(self, plan: CandidatePlan) -> None:
        plan.request = request_for_user(
            plan.user,
            plan.state,
            surface=None if plan.requested_surface == Surface.for_you else plan.requested_surface,
            k=candidate_k(plan.k),
            explain=plan.explain,
            **plan.extra,
        )
        plan.request.exclude_ids = list(dict.fromkeys([*plan.request.exclude_ids, *plan.exclude]))
        art = plan.artifacts  # an experiment arm's, else the pipeline's
        params = self.params if art is None else art.params
        templates = self.templates if art is None else art.templates
        plan.request.template = templates.get(plan.request.surface)
        plan.request.keep_fields = HIT_FIELDS  # a template's _source cannot hide them
        plan.request.params = {
            **params_for(params, plan.request.surface, plan.request.template),
            **plan.rules.engine_params(plan.request.template or load(plan.request.surface)),
        }


@dataclass
class GraphNeighbours:
    """Edges from the member's recent positives, read once: the graph candidate source's
    parameters (heaviest unseen neighbours) and the weights the graph feature uses. When the
    member context brought the inbox, the edges of the member's matched profiles (the
    ``mutual`` source and feature: :class:`~opendisco.serving.MutualLikes`) come in the same
    ``find``."""

    graph: ItemGraph
    neighbours: int = GRAPH_NEIGHBOURS
    name: str = "graph"

    async def hydrate(self, plan: CandidatePlan) -> None:
        state = plan.state
        recent: list[str] = []
        if plan.request.surface == "for_you" and state is not None:
            recent = state.recent_positive_ids[:RECENT_FANOUT]
        matched = sorted(set(plan.inbox.matches.values())) if plan.inbox is not None else []
        if not recent and not matched:
            return
        weights, mutual = await self.graph.weights_of(recent, matched)
        if matched:
            plan.mutual_weights = mutual
        if not recent:
            return
        plan.graph_weights = weights
        neighbour_params(plan, "graph", weights, recent, self.neighbours)


def neighbour_params(
    plan: CandidatePlan, source: str, weights: Mapping[str, float], recent: Sequence[str], n: int
) -> None:
    """Hand a neighbour source its parameters (``<source>_ids`` / ``<source>_weights``): the
    ``n`` heaviest positive-weight neighbours that are neither the member's recent positives
    nor excluded by the rules (the template's hard filter applies on top)."""
    skip = [*recent, *plan.rules.exclude_ids]
    top = [(i, w) for i, w in top_neighbours(weights, n, skip) if w > 0]
    if top:
        plan.request.params[f"{source}_ids"] = [i for i, _ in top]
        plan.request.params[f"{source}_weights"] = [float(w) for _, w in top]


@dataclass
class TemplateSource:
    """The surface's query template: its sources in one ``_msearch``, fused by weighted RRF."""

    client: AsyncOpenSearch
    settings: Settings
    name: str = "template"

    async def candidates(self, plan: CandidatePlan) -> CandidateSet:
        return await generate_candidates(self.client, self.settings, plan.request)


def request_ranking(plan: CandidatePlan, artifacts: Artifacts, reranker: Reranker) -> Ranking:
    """The request's ranking: its own (``plan.ranking``), its artifacts' reranker (an
    experiment arm's), or the pipeline's (``artifacts``, ``reranker``). It orders the
    candidates the filters kept; it never adds one."""
    if plan.ranking is not None:
        return plan.ranking
    if plan.artifacts is None or plan.artifacts is artifacts:
        return reranker
    return Reranker(plan.artifacts.rerank, plan.artifacts.scorer)


def served_list(
    plan: CandidatePlan,
    cs: CandidateSet,
    ids: Sequence[str],
    X: np.ndarray | None,
    rows: np.ndarray,
    exploration: Exploration | None,
    version: str,
) -> ServedList:
    """What the ranker saw for one answer: references to the feature matrix and the batch
    ids, the shown rows and their per-slot propensities (1.0 when not explored)."""
    explored = exploration is not None
    return ServedList(
        request_id=plan.request_id,
        at=plan.request.now,
        user_id=plan.user_id,
        surface=plan.request.surface,
        requested_surface=str(plan.requested_surface),
        version=version,
        degraded=cs.degraded,
        k=plan.k,
        feature_names=FEATURE_NAMES,
        X=X,
        ids=ids,
        shown=rows.tolist(),
        propensity=exploration.propensity.tolist() if explored else [1.0] * len(rows),
        explored=explored,
        policy=exploration.policy if explored else {"kind": "deterministic"},
        pool=exploration.pool.tolist() if explored else (),
        pool_w=exploration.weights.tolist() if explored else (),
        experiments=plan.experiments,
    )


@dataclass
class LogServed:
    """Impression and feature logging: every answer's :class:`~opendisco.signals.ServedList`
    (what the ranker saw) into the :class:`~opendisco.signals.ServedLog`, queued without
    copying; the log's background writer encodes and inserts in batches."""

    log: ServedLog
    name: str = "served_log"

    def after(self, plan: CandidatePlan, recs: Recommendations) -> None:
        if recs.served is not None:
            self.log.log(recs.served)

    async def drain(self) -> None:
        await self.log.drain()


@dataclass
class Parts:
    """Everything a :class:`~opendisco.serving.Discovery` runs, by stage kind."""

    query_hydrators: Sequence[QueryHydrator]
    sources: Sequence[CandidateSource]
    feature_hydrators: Sequence[FeatureHydrator]
    filters: Sequence[CandidateFilter] = ()
    side_effects: Sequence[SideEffect] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sources or not self.feature_hydrators:
            raise ConfigError("a pipeline needs a candidate source and a feature hydrator")


async def run_sources(
    sources: Sequence[CandidateSource], plan: CandidatePlan
) -> tuple[CandidateSet, float]:
    """Every source concurrently; their candidates merged in order (first occurrence of an id
    wins). A failing source degrades the set; when all fail the first error is raised."""
    t0 = time.perf_counter()
    results = await asyncio.gather(*(s.candidates(plan) for s in sources), return_exceptions=True)
    ms = (time.perf_counter() - t0) * 1e3
    sets = [r for r in results if isinstance(r, CandidateSet)]
    if not sets:
        raise next(r for r in results if isinstance(r, BaseException))
    first = sets[0]
    for src, r in zip(sources, results, strict=True):
        if isinstance(r, BaseException):
            if not isinstance(r, Exception):
                raise r
            first.errors[src.name] = str(r)[:500]
    seen = {c.id for c in first.candidates}
    for other in sets[1:]:
        first.candidates += [c for c in other.candidates if c.id not in seen]
        seen.update(c.id for c in other.candidates)
        first.errors.update(other.errors)
    return first, ms
