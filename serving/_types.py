"""What flows through the served pipeline: the request's context and the answer."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from opendisco.queries import CandidateRequest, CandidateSet
from opendisco.signals import Inbox, MemberBlocks, PacingState, ServedList, UserState

from ._filters import HardRules

if TYPE_CHECKING:
    from opendisco.rerank import CandidateBatch, Features, RerankContext, RerankResult

    from ._artifacts import Artifacts

__all__ = [
    "CANDIDATE_FACTOR",
    "MAX_CANDIDATES",
    "MAX_K",
    "MIN_CANDIDATES",
    "CandidatePlan",
    "Ranking",
    "Recommendation",
    "Recommendations",
    "candidate_k",
    "explained",
]

#: candidates fetched per requested item (the reranker needs room to diversify and balance)
CANDIDATE_FACTOR = 5
MIN_CANDIDATES = 100
MAX_CANDIDATES = 500
#: the largest page any caller (API, CLI, eval) may ask for
MAX_K = MAX_CANDIDATES


def candidate_k(k: int) -> int:
    return max(MIN_CANDIDATES, min(MAX_CANDIDATES, k * CANDIDATE_FACTOR))


class Ranking(Protocol):
    """What orders a request's candidates: a :class:`~opendisco.rerank.Reranker`, or a
    request-specific one (an experiment ranking each candidate by its own arm)."""

    def run(
        self, cands: CandidateBatch, features: Features, ctx: RerankContext | None = None, *,
        timed: bool = False,
    ) -> RerankResult: ...  # fmt: skip


@dataclass
class CandidatePlan:
    """One request as it moves through the stages: what the caller asked, the member context
    the query hydrators add, and the candidate request they build (what benchmarks replay as
    the bare engine query)."""

    requested_surface: str  # what the caller asked for (``request.surface`` may differ)
    k: int
    user_id: str | None = None
    exclude: tuple[str, ...] = ()  # ids the caller has already shown (cursor pages)
    explain: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # item_id, query_text, query_vector
    user: dict[str, Any] | None = None  # the member's ``users`` document
    state: UserState | None = None
    blocks: MemberBlocks | None = None  # members blocked by or blocking the member
    #: the hard rules of this viewer (anonymous until the member context is hydrated)
    rules: HardRules = field(default_factory=HardRules)
    request: CandidateRequest = field(default_factory=CandidateRequest)
    graph_weights: dict[str, float] | None = None  # the member's co-engagement edges
    inbox: Inbox | None = None  # who liked the member, whom they matched with
    mutual_weights: dict[str, float] | None = None  # co-engagement from the matched profiles
    viewer_profile: np.ndarray | None = None  # the member's own profile vector
    pacing: PacingState | None = None  # the pacing controller's state (None: pacing off)
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: what this request serves when it differs from the pipeline (an experiment arm): the
    #: template params, rerank config and scorer; named in the response's version string
    artifacts: Artifacts | None = None
    #: this request's ranking when it is not one reranker (a pair-level experiment)
    ranking: Ranking | None = None
    #: the experiments this request takes part in (experiment, arm, design, unit, ...)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    #: the answer's id (the API's ``X-Request-ID``); served lists and events refer to it
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: candidates the filters stage dropped, by rule (the engine should have dropped them)
    filtered: dict[str, int] = field(default_factory=dict)


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
    #: the surface's template version + the serving artifacts (params file, model) used
    version: str
    surface: str
    explain: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: the candidate stage, kept only when explaining
    candidate_set: CandidateSet | None = field(default=None, repr=False)
    #: the experiments the request took part in (see ``CandidatePlan.experiments``)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    request_id: str = ""
    #: an explored answer: its order was drawn at random (propensities in ``served``)
    explored: bool = False
    #: what the ranker saw (feature rows, shown rows, propensities): the log side effect's input
    served: ServedList | None = field(default=None, repr=False)
    #: rule → items the page's re-check against MongoDB (and its caps' check) dropped
    rechecked: dict[str, int] = field(default_factory=dict)
    #: the page was counted toward exposure when it was picked (``_caps``): not again
    counted: bool = False
    #: the candidate sources the engine did not answer whole (failed, partial, left out):
    #: source -> why (the explain block's ``source_errors``; what ``degraded`` says, by name)
    source_errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # an experiment's record names the members shown, no other (the ranking's top k may
        # hold members the page's re-check dropped, e.g. unavailable: never told the viewer)
        shown = set(self.ids)
        for rec in self.experiments:
            named = rec.get("candidates")
            if isinstance(named, dict) and not set(named) <= shown:
                rec["candidates"] = {i: a for i, a in named.items() if i in shown}

    @classmethod
    def empty(cls, plan: CandidatePlan, cs: CandidateSet, artifacts: str) -> Recommendations:
        """The answer of a request with no eligible candidate (``artifacts``: their name);
        its explain block has the keys of any other."""
        explain = plan.request.explain
        timings = {**plan.timings_ms, "total_ms": sum(plan.timings_ms.values())}
        version = f"{cs.template_version}+{artifacts}"
        return cls(
            items=[],
            degraded=cs.degraded,
            source_errors=dict(cs.errors),
            version=version,
            surface=plan.request.surface,
            explain=explained(plan, cs, None, [], timings) if explain else None,
            timings_ms=timings,
            candidate_set=cs if explain else None,
        )

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.items]


def explained(
    plan: CandidatePlan,
    cs: CandidateSet,
    trace: Any,
    items: Sequence[Any],
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """The explain block of an answer: the candidate stage's sources, the filters' drops and
    each rerank step's trace for the shown ``items`` (no step when nothing was ranked,
    ``trace`` None: an empty page has the keys of any other)."""
    return {
        "surface": plan.request.surface,
        "requested_surface": plan.requested_surface,
        "template_version": cs.template_version,
        "rendered": cs.rendered,
        "took_ms": cs.took_ms,
        "source_took_ms": cs.source_took,
        "source_errors": cs.errors,
        "skipped_sources": cs.skipped,
        "candidates": len(cs.candidates),
        "filtered": dict(plan.filtered),
        "rerank": trace.to_dict([r.id for r in items]) if trace is not None else {"steps": []},
        "timings_ms": {k: round(v, 2) for k, v in timings.items()},
    }
