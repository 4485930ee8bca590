"""The ``itemsim`` candidate source's parameters: the trained item–item table's neighbours.

:class:`ItemSimNeighbours` (a query hydrator, on only with the ``itemsim_candidates``
setting) sums the :class:`~opendisco.signals.ItemSimilarity` rows of the member's recent
positives weighted by their recency (the ``item_sim_recent`` feature's sums: the latest
positives predict the next ones best; through the feature store, whose cached rows the
features read too) and hands the heaviest unseen neighbours, with their weights, to the
for_you template's ``itemsim`` source. Off by default: the one-sided linear ranking's
candidates stay what they were; a learnt ranker trained on lists with the source turns it on.
"""

from __future__ import annotations

from dataclasses import dataclass

from opendisco.rerank import FeatureStore

from ._stages import neighbour_params
from ._types import CandidatePlan

__all__ = ["ItemSimNeighbours"]


@dataclass
class ItemSimNeighbours:
    """Heaviest unseen neighbours of the member's recent positives (see the module doc)."""

    store: FeatureStore
    neighbours: int
    name: str = "itemsim"

    async def hydrate(self, plan: CandidatePlan) -> None:
        state = plan.state
        if plan.request.surface != "for_you" or state is None or not state.recent_positive_ids:
            return
        recent = state.recent_positive_ids
        weights = await self.store.similar_recent(recent)
        neighbour_params(plan, "itemsim", weights, recent, self.neighbours)
