"""opendisco.serving: the served pipeline, assembled from named parts, and its artifacts.

:class:`Discovery` runs query hydrators → candidate sources → filters → feature hydrators →
the reranker → side effects (see ``_stages``); :class:`Artifacts` are the tuned params file and
the trained model it serves, named in every response's version string.
"""

from ._artifacts import Artifacts, load_model, load_params
from ._pipeline import Discovery, default_parts
from ._stages import (
    GRAPH_NEIGHBOURS,
    CandidateFilter,
    CandidateSource,
    FeatureHydrator,
    GraphNeighbours,
    MemberContext,
    Parts,
    QueryHydrator,
    RequestBuilder,
    SideEffect,
    StoreFeatures,
    TemplateSource,
    params_for,
)
from ._types import (
    MAX_CANDIDATES,
    MAX_K,
    CandidatePlan,
    Ranking,
    Recommendation,
    Recommendations,
    candidate_k,
)

__all__ = [
    "GRAPH_NEIGHBOURS",
    "MAX_CANDIDATES",
    "MAX_K",
    "Artifacts",
    "CandidateFilter",
    "CandidatePlan",
    "CandidateSource",
    "Discovery",
    "FeatureHydrator",
    "GraphNeighbours",
    "MemberContext",
    "Parts",
    "QueryHydrator",
    "Ranking",
    "Recommendation",
    "Recommendations",
    "RequestBuilder",
    "SideEffect",
    "StoreFeatures",
    "TemplateSource",
    "candidate_k",
    "default_parts",
    "load_model",
    "load_params",
    "params_for",
]
