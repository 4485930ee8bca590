"""Multi-source candidate generation: one ``_msearch``, dedup, weighted RRF, exploration budget.

Pure pieces (``request_params``, ``fuse``, ``explain_components``) compose the request and
the result; ``generate_candidates`` is the only function that talks to OpenSearch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._backend import backend_errors, partial
from opendisco._exceptions import InvalidInput, SearchBackendError, TemplateParamError
from opendisco._settings import Settings
from opendisco.ingest import PACKED_FIELD
from opendisco.signals import UserState, exposure_index

from ._params import ParamSpec
from ._template import Template, load, render

__all__ = [
    "Candidate",
    "CandidateRequest",
    "CandidateSet",
    "explain_components",
    "fuse",
    "generate_candidates",
    "request_for_user",
    "request_params",
    "with_source_fields",
]


@dataclass
class CandidateRequest:
    """What a surface needs to generate candidates (built by the pipeline from user state)."""

    surface: str = "for_you"
    k: int = 100
    user_vector: list[float] | None = None
    behaviour_vector: list[float] | None = None
    interests: list[str] = field(default_factory=list)
    query_text: str | None = None
    item_id: str | None = None
    viewer: dict[str, Any] | None = None  # gender, age, pref_genders, pref_age_min/max
    location: dict[str, float] | None = None  # {lat, lon}
    exclude_ids: list[str] = field(default_factory=list)  # seen + interacted + blocked
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    params: dict[str, Any] = field(default_factory=dict)  # template parameter overrides
    query_vector: list[float] | None = None  # search: the query's embedding (optional)
    explain: bool = False  # ask OpenSearch for per-hit score explanations
    exposure_caps: bool = True  # exclude items over their exposure cap
    template: Template | None = None  # a version/draft of ``surface`` (None: the shipped file)
    #: fields every hit's ``_source`` carries whatever a template's ``_source`` says (the
    #: served pipeline's in-process hard rules read them: ``serving._filters.HIT_FIELDS``)
    keep_fields: tuple[str, ...] = ()


@dataclass
class Candidate:
    id: str
    sources: dict[str, float]  # source name -> that source's score
    ranks: dict[str, int]  # source name -> 1-based rank in that source
    fused: float
    item: dict[str, Any]  # _source without vectors
    explore: bool = False  # placed in a reserved exploration slot
    packed: str | None = None  # float16 content + behaviour vectors (ingest.PACKED_FIELD)
    explanations: dict[str, Any] = field(default_factory=dict)  # source -> components


@dataclass
class CandidateSet:
    surface: str
    template_version: str
    candidates: list[Candidate]
    rendered: dict[str, Any]  # the rendered template (sources' bodies, fusion)
    took_ms: int  # engine time (max over sources)
    wall_ms: float  # round trip as seen by the client
    source_took: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # source -> why it is not whole (degraded)
    skipped: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return bool(self.errors)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.candidates]


def request_for_user(
    user: Mapping[str, Any] | None,
    state: UserState | None,
    *,
    surface: str | None = None,
    k: int = 100,
    now: datetime | None = None,
    **extra: Any,
) -> CandidateRequest:
    """A request from a member's ``users`` document and :class:`UserState` (pure): what to
    search with (vectors, interests, location).

    Without a surface: ``for_you`` when the state has a vector, else ``cold_start``;
    ``similar`` searches with the anchor item's vectors (filled in by
    :func:`generate_candidates`), not the member's. Who may be returned (exclusions, blocks,
    two-sided eligibility) is not decided here: the served pipeline adds the parameters of
    its one definition of the hard rules (``opendisco.serving.HardRules``).
    """
    user = user or {}
    vector = state.vector if state is not None else None
    behaviour = state.behaviour if state is not None else None
    if surface is None:
        surface = "for_you" if (vector or behaviour) else "cold_start"
    if surface == "similar":  # the anchor item's vectors, never the member's
        vector = behaviour = None
    return CandidateRequest(
        surface=surface,
        k=k,
        user_vector=[float(x) for x in vector] if vector else None,
        behaviour_vector=[float(x) for x in behaviour] if behaviour else None,
        interests=_member_interests(user.get("interests")),
        location=_member_location(user.get("location")),
        now=now or datetime.now(UTC),
        **extra,
    )


# A member's stored interests and location only steer the ranking (tag boosts, BM25 on the
# interests, the geo decay): odd values in a users document (a string location, lat 91, a
# number for interests) switch that steering off instead of failing every request of theirs.
_GEO = ParamSpec("location", "geo", nullable=True)


def _member_location(value: Any) -> dict[str, float] | None:
    try:
        return _GEO.coerce(value)
    except TemplateParamError:
        return None


def _member_interests(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return []
    return [str(i) for i in value if isinstance(i, str | int | float) and not isinstance(i, bool)]


def _fit(spec: ParamSpec | None, values: list[str]) -> list[str]:
    """The stored values a ``str_list`` parameter can hold: over-long ones dropped, then the
    first ``max_items``."""
    if spec is None:
        return values
    kept = [v for v in values if spec.max_len is None or len(v) <= spec.max_len]
    return kept if spec.max_items is None else kept[: spec.max_items]


def _fresh_since(now: datetime, days: int = 14) -> datetime:
    return now - timedelta(days=days)


def request_params(req: CandidateRequest, settings: Settings) -> dict[str, Any]:
    """Template parameters for ``req`` (pure): only those the surface declares are set."""
    specs = (req.template or load(req.surface)).specs
    viewer = req.viewer or {}
    interests = _fit(specs.get("interests"), [str(i) for i in req.interests])
    text_spec = specs.get("interests_text")
    interests_text = " ".join(interests)[: text_spec.max_len if text_spec else None]
    candidates: dict[str, Any] = {
        "k": req.k,
        "now": req.now,
        "index": settings.index_alias,
        "exclude_ids": sorted({str(i) for i in req.exclude_ids}),
        "exposure_index": exposure_index(settings) if req.exposure_caps else None,
        "viewer_gender": viewer.get("gender"),
        "viewer_age": viewer.get("age"),
        "viewer_pref_genders": list(viewer.get("pref_genders") or []),
        "viewer_pref_age_min": viewer.get("pref_age_min"),
        "viewer_pref_age_max": viewer.get("pref_age_max"),
        "location": req.location,
        "user_vector": req.user_vector,
        "behaviour_vector": req.behaviour_vector,
        "interests": interests,
        "interests_text": interests_text,
        "fresh_since": _fresh_since(req.now),
        "query_text": req.query_text,
        "query_vector": req.query_vector,
        "item_id": req.item_id,
    }
    out = {k: v for k, v in candidates.items() if k in specs}
    if req.surface == "search" and req.query_text is None:
        raise InvalidInput("search needs query_text")
    if req.surface == "similar" and not req.item_id:
        raise InvalidInput("similar needs item_id")
    out.update(req.params)
    return out


def with_source_fields(body: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """``body`` whose ``_source`` filtering keeps ``fields`` (pure): added to its includes,
    dropped from its excludes (a pattern matching one of them goes), ``false`` becomes just
    them. A template may trim what hits carry, never the fields a re-check reads — nor
    ``_id``: ``stored_fields: "_none_"`` (hits without ``_id`` or ``_source``: a KeyError,
    HTTP 500, on every request the template served) goes."""
    out = dict(body)
    stored = out.get("stored_fields")
    if stored == "_none_" or (isinstance(stored, list) and "_none_" in stored):
        del out["stored_fields"]
    src = out.get("_source", True)
    if not fields or src is True:
        return out
    if src is False or src is None:
        out["_source"] = {"includes": list(fields)}
        return out
    if isinstance(src, str | list):
        src = {"includes": src}
    if not isinstance(src, Mapping):
        return out  # not a _source filter: the engine refuses the body
    inc = src.get("includes", src.get("include", []))
    exc = src.get("excludes", src.get("exclude", []))
    inc = [inc] if isinstance(inc, str) else list(inc or [])
    exc = [exc] if isinstance(exc, str) else list(exc or [])
    keep = [p for p in exc if not any(fnmatchcase(f, str(p)) for f in fields)]
    new: dict[str, Any] = {"excludes": keep} if keep else {}
    if inc:
        new["includes"] = [*inc, *(f for f in fields if f not in inc)]
    out["_source"] = new or True
    return out


def fuse(
    hits_by_source: Mapping[str, Sequence[Mapping[str, Any]]],
    fusion: Mapping[str, Any],
    k: int,
) -> list[Candidate]:
    """Dedup hits across sources; weighted RRF; reserve ``explore_share`` of ``k`` slots.

    ``fused = sum_s w_s / (rank_constant + rank_s)``; ties break on id for a stable order.
    Exploration: ``ceil(k * explore_share)`` slots go to the best-ranked candidates of the
    ``explore_source`` that did not make the unreserved part of the list on their own.
    """
    rc = float(fusion.get("rank_constant", 60))
    weights = fusion.get("weights", {})
    by_id: dict[str, Candidate] = {}
    for source, hits in hits_by_source.items():
        w = float(weights.get(source, 1.0))
        for rank, hit in enumerate(hits, start=1):
            cid = str(hit["_id"])
            cand = by_id.get(cid)
            if cand is None:
                item = dict(hit.get("_source") or {})
                packed = item.pop(PACKED_FIELD, None)
                cand = by_id[cid] = Candidate(
                    id=cid,
                    sources={},
                    ranks={},
                    fused=0.0,
                    item=item,
                    packed=packed if isinstance(packed, str) else None,
                )
            if source in cand.sources:  # a source never lists an id twice, but be safe
                continue
            cand.sources[source] = float(hit.get("_score") or 0.0)
            cand.ranks[source] = rank
            cand.fused += w / (rc + rank)
            if "_explanation" in hit:
                cand.explanations[source] = hit["_explanation"]
    ordered = sorted(by_id.values(), key=lambda c: (-c.fused, c.id))
    share = float(fusion.get("explore_share", 0.0) or 0.0)
    explore_source = fusion.get("explore_source")
    reserved = min(k, math.ceil(round(k * share, 9))) if explore_source and share > 0 else 0
    if not reserved:
        return ordered[:k]
    head = ordered[: k - reserved]
    taken = {c.id for c in head}
    pool = sorted(
        (c for c in ordered if c.id not in taken and explore_source in c.ranks),
        key=lambda c: (c.ranks[explore_source], c.id),
    )[:reserved]
    for c in pool:
        c.explore = True
        taken.add(c.id)
    rest = [c for c in ordered if c.id not in taken]
    return (head + pool + rest)[:k]


def explain_components(explanation: Mapping[str, Any], depth: int = 4) -> list[dict[str, Any]]:
    """OpenSearch's score explanation flattened to ``[{depth, value, description}]``."""
    out: list[dict[str, Any]] = []

    def walk(node: Mapping[str, Any], d: int) -> None:
        if node.get("description") == "maxBoost":  # function_score's constant cap: noise
            return
        out.append({"depth": d, "value": node.get("value"), "description": node.get("description")})
        if d < depth:
            for child in node.get("details", []):
                walk(child, d + 1)

    walk(explanation, 0)
    return out


async def _anchor(client: AsyncOpenSearch, settings: Settings, item_id: str) -> dict[str, Any]:
    with backend_errors(
        f"fetching item {item_id!r} failed",
        not_found=f"item {item_id!r} is not in the catalogue",  # no index name: a client's 404
    ):
        doc = await client.get(
            index=settings.index_alias,
            id=item_id,
            params={"_source_includes": "embedding,behaviour"},
        )
    return doc.get("_source") or {}


async def generate_candidates(
    client: AsyncOpenSearch, settings: Settings, req: CandidateRequest
) -> CandidateSet:
    """Render the surface, run its sources in one ``_msearch``, fuse them.

    A failing source degrades the set (``errors``) instead of failing it; when every source
    fails the error is raised. A source the engine answered in part (shards failed, timed
    out) keeps its hits and is named in ``errors`` too, as is one the answer left out.
    ``similar`` fetches the anchor's vectors first (one GET).
    With exposure caps on, the counters index must exist (``ExposureStore.ensure``).
    """
    params = request_params(req, settings)
    if req.surface == "similar":
        anchor = await _anchor(client, settings, str(req.item_id))
        for key, field_name in (("item_vector", "embedding"), ("behaviour_vector", "behaviour")):
            if params.get(key) is None:
                params[key] = anchor.get(field_name)
    rendered = render(req.surface, params, req.template)
    names = list(rendered["sources"])
    if not names:
        return CandidateSet(
            req.surface, rendered["version"], [], rendered, 0, 0.0, skipped=rendered["skipped"]
        )
    body: list[dict[str, Any]] = []
    for name in names:
        body.append({"index": settings.index_alias})
        src = with_source_fields(rendered["sources"][name], req.keep_fields)
        body.append({**src, "explain": True} if req.explain else src)
    t0 = time.perf_counter()
    with backend_errors(f"{req.surface}: _msearch failed"):
        resp = await client.msearch(body=body)
    wall = (time.perf_counter() - t0) * 1000
    hits: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    took: dict[str, int] = {}
    answers = list(resp.get("responses", []))
    for name in names[len(answers) :]:  # an answer short: those sources were not searched
        errors[name] = "no answer in the _msearch response"
    for name, r in zip(names, answers, strict=False):
        if "error" in r:
            err = r["error"]
            errors[name] = (
                (err.get("root_cause") or [err])[0].get("reason", str(err))[:500]
                if isinstance(err, dict)
                else str(err)[:500]
            )
            continue
        took[name] = int(r.get("took", 0))
        hits[name] = r.get("hits", {}).get("hits", [])
        if (why := partial(r)) is not None:  # its hits kept: some of its matches, named
            errors[name] = why
    if errors and not hits:
        raise SearchBackendError(f"{req.surface}: every source failed: {errors}")
    cands = fuse(hits, rendered["fusion"], req.k)
    if req.explain:
        for c in cands:
            c.explanations = {s: explain_components(e) for s, e in c.explanations.items()}
    return CandidateSet(
        surface=req.surface,
        template_version=rendered["version"],
        candidates=cands,
        rendered=rendered,
        took_ms=max(took.values(), default=0),
        wall_ms=wall,
        source_took=took,
        errors=errors,
        skipped=rendered["skipped"],
    )
