"""The feature hydrators stage: the reranker's per-candidate features from the
:class:`~opendisco.rerank.FeatureStore`.

(Starting the candidate-independent lookups — the viewer's own profile vector, their taste
profile — before the ``_msearch`` was measured, issue 12: overlapping them with the member or
edge reads slowed those as much as it saved here, overlapping them with the ``_msearch``
slowed the engine's answer; on shared cores the engine and the loop are the bottleneck, so
they stay here, issued together with the per-candidate lookups.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from opendisco.rerank import CandidateBatch, Features, FeatureStore

from ._types import CandidatePlan

__all__ = ["StoreFeatures"]


@dataclass
class StoreFeatures:
    """The reranker's features from :class:`~opendisco.rerank.FeatureStore` (packed vectors
    from the hits, exposure and inbound counters, graph proximity; for member candidates their
    owners' tastes and the viewer's own profile vector, looked up alongside)."""

    store: FeatureStore
    name: str = "store"

    async def features(
        self, plan: CandidatePlan, batch: CandidateBatch, base: Features | None
    ) -> Features:
        profile = (plan.user or {}).get("profile_id") if batch.members.any() else None
        feats, plan.viewer_profile = await asyncio.gather(
            self.store.for_batch(
                batch,
                plan.state,
                plan.graph_weights,
                inbox=plan.inbox,
                mutual_weights=plan.mutual_weights,
            ),
            self.store.profile_vector(profile),
        )
        return feats
