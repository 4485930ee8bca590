"""opendisco.eval: offline evaluation and tuning against standard recommenders.

Pure pieces (readers, the time split, metrics, baselines, the runner) plus the
:class:`ServedRecommender` adapter that sends the same users through the served pipeline.
"""

from ._ab import (
    ArtifactComparison,
    PairedDiff,
    compare_artifacts,
    paired_difference,
    paired_values,
)
from ._baselines import ALS, EASE, MostPopular, RandomRecommender, ScoringRecommender, top_k
from ._data import POSITIVE_THRESHOLD, Dataset, Ratings, load_dataset, read_movielens
from ._diagnose import diagnose, stage_recall
from ._ltr import (
    ITEMSIM_GRID,
    LISTS_PER_USER,
    LTR_GRID,
    Round,
    learn_ranker,
    log_lists,
    relearn_ranker,
    rolling_rounds,
)
from ._metrics import (
    average_precision_at_k,
    catalogue_coverage,
    gini,
    hit_matrix,
    hit_rate_at_k,
    impressions,
    ndcg_at_k,
    novelty,
    recall_at_k,
)
from ._protocol import Recommender
from ._runner import EvalReport, ModelResult, accuracy, evaluate
from ._served import ReplayReport, ServedRecommender, like_event, replay
from ._similarity import SIMILARITY_TOP_N, similarity_rows, write_similarity
from ._split import COLD_USER_MAX, Split, Stage, roll_split, time_split
from ._synthetic import eligible_matrix, resolve_dataset, synthetic_dataset

__all__ = [
    "ALS",
    "COLD_USER_MAX",
    "EASE",
    "ITEMSIM_GRID",
    "LISTS_PER_USER",
    "LTR_GRID",
    "POSITIVE_THRESHOLD",
    "SIMILARITY_TOP_N",
    "ArtifactComparison",
    "Dataset",
    "EvalReport",
    "ModelResult",
    "MostPopular",
    "PairedDiff",
    "RandomRecommender",
    "Ratings",
    "Recommender",
    "ReplayReport",
    "Round",
    "ScoringRecommender",
    "ServedRecommender",
    "Split",
    "Stage",
    "accuracy",
    "average_precision_at_k",
    "catalogue_coverage",
    "compare_artifacts",
    "diagnose",
    "eligible_matrix",
    "evaluate",
    "gini",
    "hit_matrix",
    "hit_rate_at_k",
    "impressions",
    "learn_ranker",
    "like_event",
    "load_dataset",
    "log_lists",
    "ndcg_at_k",
    "novelty",
    "paired_difference",
    "paired_values",
    "read_movielens",
    "recall_at_k",
    "relearn_ranker",
    "replay",
    "resolve_dataset",
    "roll_split",
    "rolling_rounds",
    "similarity_rows",
    "stage_recall",
    "synthetic_dataset",
    "time_split",
    "top_k",
    "write_similarity",
]
