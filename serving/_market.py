"""The pipeline's two-sided-market parts: mutual likes, live trending, pacing.

Query hydrators (run after the candidate request is built):

    MutualLikes    the viewer's inbox row (one point read, in the member context's round
                   trip): members who already liked the viewer → the ``likers`` source
                   (``liker_ids``) and the ``liked_viewer`` feature; the co-engaged neighbours
                   of the viewer's matched profiles (their graph rows, read with the recent
                   positives' by ``GraphNeighbours``) → the friends-of-matches ``mutual``
                   source and feature
    LiveTrending   the items with the highest live decayed like/match counts (one search over
                   the exposure counters per ``trending_refresh_s`` per process, shared by all
                   requests) → ``trending_ids``/``trending_weights`` of the trending source
    PacingBudget   the exposure budget per member from the pacing controller (in memory)

(Served impressions are counted where a list is shown — the API's answer, fallback answers
included: :meth:`opendisco.serving.Discovery.record_served` — not here: the pipeline also
runs for the fallback's prefetch, evaluation and benchmarks, which show nothing to anyone.)

All of them are inert where nothing is two-sided or live: no inbox row, no trending counts, no
member profiles among the candidates (a one-sided catalogue).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from opendisco.queries import load
from opendisco.signals import (
    ExposureStore,
    ItemGraph,
    PacingController,
    UserGraph,
    top_neighbours,
)

from ._tasks import retrieve
from ._types import CandidatePlan

__all__ = [
    "MUTUAL_NEIGHBOURS",
    "LiveTrending",
    "MutualLikes",
    "PacingBudget",
]

#: friends-of-matches neighbours handed to the ``mutual`` source
MUTUAL_NEIGHBOURS = 200
#: likers handed to the ``likers`` source (the most recent)
MAX_LIKERS = 500


def _declares(plan: CandidatePlan, param: str) -> bool:
    """The request's template (an arm's or a served version, else the shipped file) declares
    ``param``: a version that dropped a source and its parameters is not handed them."""
    return param in (plan.request.template or load(plan.request.surface)).specs


@dataclass
class MutualLikes:
    """The viewer's likers and matches (see the module docstring)."""

    users: UserGraph
    graph: ItemGraph
    neighbours: int = MUTUAL_NEIGHBOURS
    name: str = "mutual"

    async def hydrate(self, plan: CandidatePlan) -> None:
        if not plan.user_id:
            return
        if plan.inbox is None:  # not read with the member context (another assembly)
            plan.inbox = await self.users.inbox(plan.user_id)
        inbox = plan.inbox
        if inbox.likers and _declares(plan, "liker_ids"):
            recent = sorted(inbox.likers.items(), key=lambda kv: (-kv[1], kv[0]))
            plan.request.params["liker_ids"] = [m for m, _ in recent[:MAX_LIKERS]]
        matched = sorted(set(inbox.matches.values()))
        if not matched:
            return
        if plan.mutual_weights is None:  # not read with the recent positives' edges
            plan.mutual_weights = await self.graph.weights(matched)
        weights = plan.mutual_weights
        if _declares(plan, "mutual_ids"):
            skip = [*matched, *plan.request.exclude_ids]
            top = [(i, w) for i, w in top_neighbours(weights, self.neighbours, skip) if w > 0]
            if top:
                plan.request.params["mutual_ids"] = [i for i, _ in top]
                plan.request.params["mutual_weights"] = [float(w) for _, w in top]


@dataclass
class LiveTrending:
    """Live trending items for the trending source, refreshed per process (stale while it
    revalidates: a request never waits for a refresh once a first list exists)."""

    exposure: ExposureStore
    k: int
    refresh_s: float
    name: str = "trending"
    _items: list[tuple[str, float]] | None = field(default=None, repr=False)
    _at: float = field(default=-1e18, repr=False)
    _task: asyncio.Future[list[tuple[str, float]]] | None = field(default=None, repr=False)

    async def current(self) -> list[tuple[str, float]]:
        stale = time.monotonic() - self._at > self.refresh_s
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._fetch())
            self._task.add_done_callback(retrieve)  # a failed refresh keeps the previous list
        if self._items is None and self._task is not None:
            await asyncio.shield(self._task)
        return self._items or []

    async def _fetch(self) -> list[tuple[str, float]]:
        items = await self.exposure.trending(self.k)
        self._items, self._at = items, time.monotonic()
        return items

    async def hydrate(self, plan: CandidatePlan) -> None:
        if not _declares(plan, "trending_ids"):
            return
        items = await self.current()
        if items:
            plan.request.params["trending_ids"] = [i for i, _ in items]
            plan.request.params["trending_weights"] = [w for _, w in items]


@dataclass
class PacingBudget:
    """The pacing controller's state the pacing step applies (None: pacing off)."""

    controller: PacingController
    name: str = "pacing"

    async def hydrate(self, plan: CandidatePlan) -> None:
        plan.pacing = self.controller.budget()
