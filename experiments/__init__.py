"""opendisco.experiments: online experiments in a two-sided marketplace.

Experiments as data (:class:`Experiment`, stored in MongoDB), assignment as a pure function
(:mod:`._assign`: SHA-256 buckets, layers, a global holdout), interference-aware designs
(user, item, two-sided, cluster, switchback), the analysis (:func:`analyze`: delta method,
CUPED, cluster-robust SEs, the two-sided interpolating estimator with a two-way bootstrap, an
SRM gate) and a seeded marketplace simulator (:mod:`.sim`) where a design's bias can be
measured against the true global effect. It sits above ``serving`` (its parts are added to a
``Discovery`` by the API and the CLI) and beside ``eval``.
"""

from . import sim
from ._analysis import Estimate, Exposures, SrmCheck
from ._assign import Assignment, arm_index, bucket, candidate_arm, viewer_assignment
from ._balance import TwoSidedPlan, market_balance, two_sided_plan
from ._merge import merge_ranks
from ._metrics import METRICS, Metric
from ._model import PAIR_LEVEL, Arm, Design, DesignKind, Experiment, Status, Traffic
from ._readout import Covariates, Readout, analyze
from ._serving import ExperimentLog, ExperimentRegistry, install
from ._store import ExperimentStore
from ._switchback import SwitchbackPlan, switchback_plan

__all__ = [
    "METRICS",
    "PAIR_LEVEL",
    "Arm",
    "Assignment",
    "Covariates",
    "Design",
    "DesignKind",
    "Estimate",
    "Experiment",
    "ExperimentLog",
    "ExperimentRegistry",
    "ExperimentStore",
    "Exposures",
    "Metric",
    "Readout",
    "SrmCheck",
    "Status",
    "SwitchbackPlan",
    "Traffic",
    "TwoSidedPlan",
    "analyze",
    "arm_index",
    "bucket",
    "candidate_arm",
    "install",
    "market_balance",
    "merge_ranks",
    "sim",
    "switchback_plan",
    "two_sided_plan",
    "viewer_assignment",
]
