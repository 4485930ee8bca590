"""The feature hydrators stage: the reranker's per-candidate features from the
:class:`~opendisco.rerank.FeatureStore`.

What needs no candidate — the viewer's taste profile, the item–item rows of their recent
positives, their own profile vector (:meth:`~opendisco.rerank.FeatureStore.viewer`) — is
started by :meth:`StoreFeatures.prepare` before the candidate ``_msearch`` and runs while the
engine answers; after the candidates only the per-candidate lookups are waited for.
Measured in process, paired per member (``bench/api_stages.py --ab``, c=1): −3.7 ms per
request (SE 2.9) on a quiet machine, −14.5 ms (SE 6.1) at load 15–17; at c=4 and load 15–17
no difference (−17 ms, SE 56): with every core busy the overlap slows the engine's answer
about as much as it saves (bench/README.md, api).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from opendisco.rerank import CandidateBatch, Features, FeatureStore, ViewerFeatures

from ._tasks import settle
from ._types import CandidatePlan

__all__ = ["FeatureHydrator", "StoreFeatures"]


class FeatureHydrator(Protocol):
    """Fills the reranker's per-candidate features; hydrators run in order, each receiving the
    features built so far (``None`` for the first) and returning them extended. ``prepare``
    starts, without waiting, what needs no candidate (it runs beside the candidate sources;
    its future comes back to ``features``; ``settle`` cancels it if unused)."""

    name: str

    def prepare(self, plan: CandidatePlan) -> asyncio.Future[Any] | None: ...

    async def features(
        self,
        plan: CandidatePlan,
        batch: CandidateBatch,
        base: Features | None,
        prepared: asyncio.Future[Any] | None = None,
    ) -> Features: ...


@dataclass
class StoreFeatures:
    """The reranker's features from :class:`~opendisco.rerank.FeatureStore` (packed vectors
    from the hits, exposure and inbound counters, graph proximity; for member candidates their
    owners' tastes and the viewer's own profile vector)."""

    store: FeatureStore
    name: str = "store"

    def prepare(self, plan: CandidatePlan) -> asyncio.Future[ViewerFeatures]:
        """Start the viewer's lookups (they need no candidate)."""
        return asyncio.ensure_future(
            self.store.viewer(plan.state, (plan.user or {}).get("profile_id"))
        )

    async def features(
        self,
        plan: CandidatePlan,
        batch: CandidateBatch,
        base: Features | None,
        prepared: asyncio.Future[ViewerFeatures] | None = None,
    ) -> Features:
        viewer = prepared if prepared is not None else self.prepare(plan)
        try:
            feats = await self.store.for_batch(
                batch,
                plan.state,
                plan.graph_weights,
                inbox=plan.inbox,
                mutual_weights=plan.mutual_weights,
                viewer=viewer,
            )
        finally:
            if prepared is None:
                settle([viewer])
        # the viewer's profile vector matters only against member candidates (reciprocal)
        plan.viewer_profile = viewer.result().vector if batch.members.any() else None
        return feats
