"""opendisco.rerank: the final, personal, real-time order of a candidate set.

A :class:`Reranker` runs named pure steps (``score → rules → fatigue → exposure → mmr → caps →
pins``) over numpy arrays; :class:`FeatureStore` fills the arrays with a bounded number of
round trips; ``train_als``/``fold_in`` learn behavioural vectors; ``LearnedScorer`` swaps the
linear model for LightGBM LambdaMART; ``pl_sample`` draws an explored order with known
propensities.
"""

from ._als import AlsModel, fold_in, train_als, write_behaviour
from ._config import DEFAULT_STEPS, RerankConfig, merged_config
from ._explore import pl_marginals, pl_sample, pl_weights
from ._features import FeatureStore, TTLCache
from ._learned import LABELS, LearnedScorer, lambdamart_dataset, train_lambdamart
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
    "exposure_adjustment",
    "fatigue_penalty",
    "fold_in",
    "lambdamart_dataset",
    "merged_config",
    "mmr_select",
    "pl_marginals",
    "pl_sample",
    "pl_weights",
    "train_als",
    "train_lambdamart",
    "write_behaviour",
]
