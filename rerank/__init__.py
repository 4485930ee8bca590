"""opendisco.rerank: the final, personal, real-time order of a candidate set.

A :class:`Reranker` runs named pure steps (``score → rules → fatigue → exposure → reciprocal →
pacing → mmr → caps → pins``; the two-sided ``reciprocal`` and ``pacing`` act on member
profiles only) over numpy arrays; :class:`FeatureStore` fills the arrays with a bounded number of
round trips; ``train_als``/``fold_in`` learn behavioural vectors; ``LearnedScorer`` swaps the
linear model for LightGBM LambdaMART.
"""

from ._als import AlsModel, fold_in, train_als, write_behaviour
from ._config import DEFAULT_STEPS, RerankConfig, merged_config
from ._features import FeatureStore, TTLCache
from ._learned import LABELS, LearnedScorer, lambdamart_dataset, train_lambdamart
from ._market import combine, live_trending, member_budgets, pacing_penalty, reciprocal_estimate
from ._reranker import Reranker, RerankResult, StepRecord, Trace
from ._steps import (
    STEPS,
    LinearScorer,
    RerankInputs,
    RerankState,
    Scorer,
    apply_caps,
    apply_pins,
    assemble_features,
    exposure_adjustment,
    fatigue_penalty,
    mmr_select,
)
from ._types import FEATURE_NAMES, CandidateBatch, Features, RerankContext

__all__ = [
    "DEFAULT_STEPS",
    "FEATURE_NAMES",
    "LABELS",
    "STEPS",
    "AlsModel",
    "CandidateBatch",
    "FeatureStore",
    "Features",
    "LearnedScorer",
    "LinearScorer",
    "RerankConfig",
    "RerankContext",
    "RerankInputs",
    "RerankResult",
    "RerankState",
    "Reranker",
    "Scorer",
    "StepRecord",
    "TTLCache",
    "Trace",
    "apply_caps",
    "apply_pins",
    "assemble_features",
    "combine",
    "exposure_adjustment",
    "fatigue_penalty",
    "fold_in",
    "lambdamart_dataset",
    "live_trending",
    "member_budgets",
    "merged_config",
    "mmr_select",
    "pacing_penalty",
    "reciprocal_estimate",
    "train_als",
    "train_lambdamart",
    "write_behaviour",
]
