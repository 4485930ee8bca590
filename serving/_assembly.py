"""The default assembly of the served pipeline's named parts (what :class:`Discovery` runs
unless it is given other ``Parts``: the evaluator, the playground and tests assemble their own
from the same parts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._settings import Settings
from opendisco.queries import Template
from opendisco.rerank import FeatureStore
from opendisco.signals import BlockStore, ItemGraph, ServedLog, UserStateStore

from ._filters import HardRulesFilter
from ._stages import (
    GraphNeighbours,
    LogServed,
    MemberContext,
    Parts,
    RequestBuilder,
    StoreFeatures,
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
) -> Parts:
    """The default assembly: member context and graph neighbours, the surface's template (or
    its served version in ``templates``) as the candidate source, the hard rules as the
    filter, the feature store as the feature hydrator, and (``served_log``) the served-list
    log as a side effect."""
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
    return Parts(
        query_hydrators=[
            MemberContext(db, UserStateStore(db), BlockStore(db)),
            RequestBuilder(params, dict(templates or {})),
            GraphNeighbours(ItemGraph(db)),
        ],
        sources=[TemplateSource(os_client, settings)],
        filters=[HardRulesFilter()],
        feature_hydrators=[StoreFeatures(features)],
        side_effects=side_effects,
    )
