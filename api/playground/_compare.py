"""One member's answer from the served artifacts and from a draft, side by side, explained.

Both answers come from a :class:`~opendisco.serving.Discovery` — the served pipeline, every
stage and every hard rule (eligibility both ways, blocks, seen, exposure caps) — built on the
API's clients with the artifacts in question and **without side effects** (a preview logs no
impression and no served list). ``explain=True`` gives, per item, the candidate sources' ranks
and scores, the engine's score components per source and each rerank step's effect.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from opendisco._exceptions import BackendError, SearchTimeout
from opendisco.serving import Artifacts, Discovery, Recommendations

from .._fallback import to_served
from .._runtime import Runtime

__all__ = ["Pipelines", "answer", "changes"]

#: profile fields shown beside an item (the rest of ``_source`` stays out of the page)
_SHOWN = ("title", "kind", "category", "gender", "age", "tags", "owner_id", "popularity", "quality")
#: engine score components kept per source (the explanation tree, depth-first)
_COMPONENTS = 14


class Pipelines:
    """Side-effect-free pipelines on the runtime's clients, one per artifacts name (LRU)."""

    def __init__(self, rt: Runtime, size: int = 8) -> None:
        self.rt = rt
        self.size = size
        self._cache: OrderedDict[str, Discovery] = OrderedDict()

    @property
    def current(self) -> Artifacts:
        return self.rt.discovery.artifacts

    def get(self, artifacts: Artifacts) -> Discovery:
        hit = self._cache.get(artifacts.name)
        if hit is not None:
            self._cache.move_to_end(artifacts.name)
            return hit
        rt = self.rt
        disc = Discovery(rt.settings, rt.os_client, rt.db, artifacts=artifacts)
        disc.parts = replace(disc.parts, side_effects=[])
        self._cache[artifacts.name] = disc
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return disc


def _item(rec: Any, position: int, cand: Any) -> dict[str, Any]:
    served = to_served(rec, with_trace=True)
    engine = {}
    if cand is not None:
        engine = {s: comps[:_COMPONENTS] for s, comps in cand.explanations.items()}
    return {
        "id": served["id"],
        "position": position,
        "score": served["score"],
        "item": {k: served["item"][k] for k in _SHOWN if k in served["item"]},
        "sources": served["sources"],
        "ranks": dict(cand.ranks) if cand is not None else {},
        "fused": float(cand.fused) if cand is not None else None,
        "engine": engine,
        "trace": served["trace"] or [],
        "explore": bool(rec.explore),
    }


def _shape(recs: Recommendations) -> dict[str, Any]:
    by_id = {c.id: c for c in recs.candidate_set.candidates} if recs.candidate_set else {}
    ex = recs.explain or {}
    return {
        "version": recs.version,
        "surface": recs.surface,
        "degraded": recs.degraded,
        "candidates": ex.get("candidates"),
        "source_errors": ex.get("source_errors", {}),
        "skipped_sources": ex.get("skipped_sources", []),
        "rerank_steps": [
            {"step": s["step"], "ms": s["ms"], "changed": len(s["changed"])}
            for s in (ex.get("rerank") or {}).get("steps", [])
        ],
        "timings_ms": ex.get("timings_ms", {}),
        "items": [_item(r, p, by_id.get(r.id)) for p, r in enumerate(recs.items)],
    }


async def answer(
    disc: Discovery, user_id: str, surface: str, k: int, timeout_s: float
) -> dict[str, Any]:
    """The explained answer for one member (no side effects), within ``timeout_s``."""
    try:
        recs = await asyncio.wait_for(
            disc.recommend(user_id, surface=surface, k=k, explain=True), timeout_s
        )
    except TimeoutError as exc:
        raise SearchTimeout(f"no answer for {user_id} within {timeout_s:.0f} s") from exc
    return _shape(recs)


async def draft_answer(
    disc: Discovery, user_id: str, surface: str, k: int, timeout_s: float
) -> dict[str, Any]:
    """The draft's answer; an engine that rejects every source of the draft is reported in
    the answer (``error``) instead of failing the page."""
    try:
        return await answer(disc, user_id, surface, k, timeout_s)
    except BackendError as exc:
        return {"version": disc.version, "error": str(exc), "items": []}


def changes(current: Sequence[str], draft: Sequence[str]) -> dict[str, Any]:
    """Position changes from the current list to the draft's: per draft item ``from``
    (current position or None: new) and ``moved`` (positive: up); the ids that left."""
    where = {i: p for p, i in enumerate(current)}
    kept = set(draft)
    moves = {}
    for pos, item in enumerate(draft):
        before = where.get(item)
        moves[item] = {"from": before, "to": pos, "moved": None if before is None else before - pos}
    return {
        "moves": moves,
        "dropped": [i for i in current if i not in kept],
        "changed": list(current) != list(draft),
    }
