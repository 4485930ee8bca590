"""opendisco.rerank: the final, personal, real-time order of a candidate set.

A :class:`Reranker` runs named pure steps (``score → rules → fatigue → exposure → reciprocal →
pacing → mmr → caps → pins``; the two-sided ``reciprocal`` and ``pacing`` act on member
profiles only) over numpy arrays; :class:`FeatureStore` fills the arrays with a bounded number of
round trips; ``train_als``/``fold_in`` learn behavioural vectors; ``LearnedScorer`` swaps the
linear model for LightGBM LambdaMART; ``pl_sample`` draws an explored order with known
propensities.
"""

from ._als import AlsModel, fold_in, train_als
from ._config import DEFAULT_STEPS, MAX_KNOB, RerankConfig, merged_config
from ._explore import pl_marginals, pl_sample, pl_weights
from ._features import FeatureStore, ViewerFeatures
from ._learned import LTR_PARAMS, LearnedScorer, align_features, train_lambdamart
from ._ltr import (
    LabelPolicy,
    LtrData,
    LtrResult,
    concat_data,
    join_outcomes,
    load_ltr_inputs,
    ndcg_at,
    save_model,
    split_outcomes,
    train_ltr,
)
from ._ltr_checks import ablation_ndcg, single_feature_ndcg
from ._market import (
    attention_excess,
    below_cut,
    bucket_level,
    combine,
    live_trending,
    member_budgets,
    pacing_boost,
    pacing_penalty,
    reciprocal_estimate,
    reply_chance,
    segment_prior,
)
from ._profile import PROFILE_FIELDS, MemberProfile, profile_features
from ._reranker import Reranker, RerankResult, StepRecord, Trace
from ._similarity import ease_neighbours, recency_scales
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
from ._types import (
    FEATURE_NAMES,
    PERCENTILE_COLUMNS,
    PROFILE_COLUMNS,
    RANKED_SOURCES,
    CandidateBatch,
    Features,
    RerankContext,
)

__all__ = [
    "DEFAULT_STEPS",
    "FEATURE_NAMES",
    "LTR_PARAMS",
    "MAX_KNOB",
    "PERCENTILE_COLUMNS",
    "PROFILE_COLUMNS",
    "PROFILE_FIELDS",
    "RANKED_SOURCES",
    "STEPS",
    "AlsModel",
    "CandidateBatch",
    "FeatureStore",
    "Features",
    "LabelPolicy",
    "LearnedScorer",
    "LinearScorer",
    "LtrData",
    "LtrResult",
    "MemberProfile",
    "RerankConfig",
    "RerankContext",
    "RerankInputs",
    "RerankResult",
    "RerankState",
    "Reranker",
    "Scorer",
    "StepRecord",
    "Trace",
    "ViewerFeatures",
    "ablation_ndcg",
    "align_features",
    "apply_caps",
    "apply_pins",
    "assemble_features",
    "attention_excess",
    "below_cut",
    "bucket_level",
    "combine",
    "concat_data",
    "ease_neighbours",
    "exposure_adjustment",
    "fatigue_penalty",
    "fold_in",
    "join_outcomes",
    "live_trending",
    "load_ltr_inputs",
    "member_budgets",
    "merged_config",
    "mmr_select",
    "ndcg_at",
    "pacing_boost",
    "pacing_penalty",
    "pl_marginals",
    "pl_sample",
    "pl_weights",
    "profile_features",
    "recency_scales",
    "reciprocal_estimate",
    "reply_chance",
    "save_model",
    "segment_prior",
    "single_feature_ndcg",
    "split_outcomes",
    "train_als",
    "train_lambdamart",
    "train_ltr",
]
