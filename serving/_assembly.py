"""The default assembly of the served pipeline's named parts (what :class:`Discovery` runs
unless it is given other ``Parts``: the evaluator, the playground and tests assemble their own
from the same parts).

Query hydrators (member context with the inbox, the request, graph neighbours with the
matched profiles' edges, mutual likes, live trending, (``itemsim_candidates``) the trained
item–item neighbours, the pacing budget) → the surface's
template as the candidate source → the hard rules as the filter (every source's candidates,
whatever proposed them) → the feature store as the feature hydrator → (``served_log``) the
served-list log as a side effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._settings import Settings
from opendisco.queries import Template
from opendisco.rerank import FeatureStore
from opendisco.signals import (
    BlockStore,
    PacingController,
    ServedLog,
    UserGraph,
    UserStateStore,
    followed_behaviour,
)

from ._features import StoreFeatures
from ._filters import HardRulesFilter
from ._itemsim import ItemSimNeighbours
from ._market import LiveTrending, MutualLikes, PacingBudget
from ._stages import (
    GraphNeighbours,
    LogServed,
    MemberContext,
    Parts,
    RequestBuilder,
    TemplateSource,
)

__all__ = ["default_parts"]


def default_parts(
    settings: Settings,
    os_client: AsyncOpenSearch,
    db: Any,
    features: FeatureStore,
    params: Mapping[str, Any],
    templates: Mapping[str, Template] | None = None,
    *,
    pacing: PacingController | None = None,
) -> Parts:
    """The default assembly: member context, graph neighbours, mutual likes, live trending and
    the pacing budget; the surface's template (or its served version in ``templates``) as the
    candidate source; the hard rules as the filter; the feature store as the feature
    hydrator; and (``served_log``) the served-list log as a side effect."""
    side_effects: list[Any] = []
    if settings.served_log:
        side_effects.append(
            LogServed(
                ServedLog(
                    db,
                    max_rows=settings.served_log_rows,
                    max_queue=settings.served_log_queue,
                    days=settings.served_log_days,
                )
            )
        )
    hydrators: list[Any] = [
        MemberContext(
            db,
            UserStateStore(db),
            BlockStore(db),
            UserGraph(db),
            followed_behaviour(db, settings),
        ),
        RequestBuilder(params, dict(templates or {})),
        GraphNeighbours(features.graph),  # one graph (and its row cache) per pipeline
        MutualLikes(UserGraph(db), features.graph),
        LiveTrending(features.exposure, settings.trending_top_k, settings.trending_refresh_s),
    ]
    if settings.itemsim_candidates > 0:
        hydrators.append(ItemSimNeighbours(features, settings.itemsim_candidates))
    if pacing is not None:
        hydrators.append(PacingBudget(pacing))
    return Parts(
        query_hydrators=hydrators,
        sources=[TemplateSource(os_client, settings)],
        filters=[HardRulesFilter()],
        feature_hydrators=[StoreFeatures(features)],
        side_effects=side_effects,
    )
