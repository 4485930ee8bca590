"""opendisco.serving: the served pipeline, assembled from named parts, and its artifacts.

:class:`Discovery` runs query hydrators → candidate sources (a page a failed one left short
filled from a :class:`FillSource`, ``_fill``) → filters (the hard rules, ``_filters``) →
feature hydrators → the reranker → the page (exploration for a share of personal answers,
``_explore``; every shown item re-checked against MongoDB, ``_page``) → side effects (the
served-list log; see ``_stages``); :class:`Artifacts` are the tuned params file and the
trained model it serves, named in every response's version string.
"""

from ._artifacts import Artifacts, check_params, load_model, load_params, load_template
from ._assembly import default_parts
from ._encoder import ENCODER_LOADED, QueryEncoder
from ._explore import EXPLORED_SURFACES, Exploration, Explorer
from ._features import FeatureHydrator, StoreFeatures
from ._fill import FillSource
from ._filters import (
    AGE_DOMAIN,
    RULE_FIELDS,
    HardRules,
    HardRulesFilter,
    Rule,
    stored_rule_fields,
)
from ._page import read_rule_fields
from ._pipeline import Discovery
from ._reads import REQUEST_READS, RequestReads, read_member, reads_once
from ._stages import (
    GRAPH_NEIGHBOURS,
    CandidateFilter,
    CandidateSource,
    GraphNeighbours,
    LogServed,
    MemberContext,
    Parts,
    QueryHydrator,
    RequestBuilder,
    SideEffect,
    TemplateSource,
    params_for,
)
from ._tasks import retrieve
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
    "AGE_DOMAIN",
    "ENCODER_LOADED",
    "EXPLORED_SURFACES",
    "GRAPH_NEIGHBOURS",
    "MAX_CANDIDATES",
    "MAX_K",
    "REQUEST_READS",
    "RULE_FIELDS",
    "Artifacts",
    "CandidateFilter",
    "CandidatePlan",
    "CandidateSource",
    "Discovery",
    "Exploration",
    "Explorer",
    "FeatureHydrator",
    "FillSource",
    "GraphNeighbours",
    "HardRules",
    "HardRulesFilter",
    "LogServed",
    "MemberContext",
    "Parts",
    "QueryEncoder",
    "QueryHydrator",
    "Ranking",
    "Recommendation",
    "Recommendations",
    "RequestBuilder",
    "RequestReads",
    "Rule",
    "SideEffect",
    "StoreFeatures",
    "TemplateSource",
    "candidate_k",
    "check_params",
    "default_parts",
    "load_model",
    "load_params",
    "load_template",
    "params_for",
    "read_member",
    "read_rule_fields",
    "reads_once",
    "retrieve",
    "stored_rule_fields",
]
