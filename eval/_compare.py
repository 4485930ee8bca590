"""Baselines fitted for a stage, with hyper-parameters picked on the validation stage."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from opendisco._exceptions import InvalidInput
from opendisco._settings import INDEX_NAME, MONGO_DB_NAME

from ._baselines import ALS, EASE, MostPopular, RandomRecommender, ScoringRecommender
from ._runner import evaluate
from ._served import ServedRecommender
from ._split import Split
from ._tune import split_params

__all__ = [
    "ALS_FACTORS",
    "ALS_REGULARIZATIONS",
    "EASE_EXTEND",
    "EASE_LAMBDAS",
    "baseline_objective",
    "fit_baselines",
    "namespaced",
    "sample_users",
    "served_objective",
    "tune_als",
    "tune_ease",
]

#: λ grid searched for EASE on the validation stage (around ml-latest-small's best; the best
#: λ grows with the users of a dataset, so :func:`tune_ease` goes past an edge that wins).
EASE_LAMBDAS = (50.0, 200.0, 500.0, 1000.0, 2000.0)
#: λs tried beyond the grid's edge while the edge wins (each 4x further out)
EASE_EXTEND = 4


def tune_ease(
    split: Split,
    *,
    k: int = 10,
    lambdas: Sequence[float] = EASE_LAMBDAS,
    max_items: int = 3000,
    users: Sequence[int] | None = None,
    extend: int = EASE_EXTEND,
) -> tuple[float, dict[float, float]]:
    """The λ with the best validation NDCG@k (and the score of every λ tried). While the
    smallest or largest λ tried is the best, λ/4 or 4λ is tried too (at most ``extend``
    more): a fixed grid capped the pick at its edge (a 60-user slice's best was past 2000)."""
    stage = split.stage("validation")
    ease = EASE(lam=lambdas[0], max_items=max_items).fit(stage)
    scores: dict[float, float] = {}

    def score(lam: float) -> None:
        ease.with_lambda(lam)
        report = evaluate({"EASE": ease}, stage, k=k, users=users)
        scores[lam] = report.models[0].metrics[f"ndcg@{k}"]

    def best() -> float:
        return max(scores, key=lambda lam: (scores[lam], -lam))

    for lam in lambdas:
        score(lam)
    for _ in range(extend if len(scores) > 1 else 0):
        pick = best()
        if pick == max(scores):
            score(pick * 4)
        elif pick == min(scores):
            score(pick / 4)
        else:
            break
    return best(), scores


#: ALS sizes and regularizations searched on the validation stage, one after the other (the
#: best size at the first regularization, then the regularization at that size): a fixed 64
#: factors and 0.05 overfit a 50-user dataset (test NDCG@10 0.021 against 0.034 at 16)
ALS_FACTORS = (16, 32, 64, 128)
ALS_REGULARIZATIONS = (0.05, 1.0, 10.0)


def tune_als(
    split: Split,
    *,
    k: int = 10,
    users: Sequence[int] | None = None,
    factors: Sequence[int] = ALS_FACTORS,
    regularizations: Sequence[float] = ALS_REGULARIZATIONS,
    fixed: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """ALS's ``factors`` then ``regularization`` with the best validation NDCG@k (ties: the
    smaller model, the stronger regularization), and the score of every pair tried
    (``"<factors>/<regularization>"``)."""
    stage = split.stage("validation")
    scores: dict[str, float] = {}

    def score(f: int, reg: float) -> float:
        key = f"{f}/{reg:g}"
        if key not in scores:
            model = ALS(**{**(fixed or {}), "factors": f, "regularization": reg}).fit(stage)
            report = evaluate({"ALS": model}, stage, k=k, users=users)
            scores[key] = report.models[0].metrics[f"ndcg@{k}"]
        return scores[key]

    reg0 = regularizations[0]
    best_f = max(factors, key=lambda f: (score(f, reg0), -f))
    best_reg = max(regularizations, key=lambda r: (score(best_f, r), r))
    return {"factors": best_f, "regularization": best_reg}, scores


def fit_baselines(
    split: Split,
    *,
    k: int = 10,
    stage: str = "test",
    tune: bool = True,
    max_items: int = 3000,
    als: dict[str, Any] | None = None,
    tune_users: Sequence[int] | None = None,
    include_random: bool = True,
) -> tuple[dict[str, ScoringRecommender], dict[str, Any]]:
    """Fit random, most-popular, EASE (λ tuned on validation) and ALS (size and
    regularization tuned on validation, unless ``als`` names them) on ``stage``."""
    info: dict[str, Any] = {}
    lam = 500.0
    held_out = split.stage("validation").evaluable
    if tune_users is not None:
        held_out = np.intersect1d(held_out, np.asarray(tune_users, dtype=np.int64))
    if tune and not len(held_out):
        # the users' positives all went to training and test: nothing to pick λ on (every λ
        # scored NaN and the first one won)
        tune = False
        info["ease_lambda_untuned"] = "no validation targets"
    if tune:
        lam, grid = tune_ease(split, k=k, max_items=max_items, users=tune_users)
        info["ease_validation_ndcg"] = {str(key): round(v, 5) for key, v in grid.items()}
    info["ease_lambda"] = lam
    info["ease_max_items"] = max_items
    als_params = {"factors": 64, "regularization": 0.05, "alpha": 10.0, "iterations": 15}
    als_params.update(als or {})
    if tune and not {"factors", "regularization"} & set(als or {}):
        picked, als_grid = tune_als(split, k=k, users=tune_users, fixed=als_params)
        als_params.update(picked)
        info["als_validation_ndcg"] = {key: round(v, 5) for key, v in als_grid.items()}
    info["als"] = als_params
    target = split.stage(stage)  # type: ignore[arg-type]
    models: dict[str, ScoringRecommender] = {}
    if include_random:
        models["random"] = RandomRecommender(seed=0).fit(target)
    models["most-popular"] = MostPopular().fit(target)
    models["EASE"] = EASE(lam=lam, max_items=max_items).fit(target)
    models["ALS"] = ALS(**als_params).fit(target)
    return models, info


def sample_users(n_users: int, n: int | None, seed: int = 0) -> np.ndarray | None:
    """A sorted random sample of ``n`` user indices (None: everyone)."""
    if n is None or n >= n_users:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_users, size=n, replace=False))


def check_namespace(namespace: str) -> str:
    """``namespace`` when it can name the evaluation's Mongo database and (``-items``) index
    alias (:class:`InvalidInput` otherwise, before any work)."""
    if not (
        re.fullmatch(MONGO_DB_NAME, namespace) and re.fullmatch(INDEX_NAME, f"{namespace}-items")
    ):
        raise InvalidInput(
            f"namespace {namespace!r} cannot name a MongoDB database and an OpenSearch index "
            "(lowercase letters, digits, '-' and '_'; no '/', '.', spaces)"
        )
    return namespace


def namespaced(settings: Any, namespace: str) -> Any:
    """Settings whose index alias and Mongo database are the evaluation's own."""
    check_namespace(namespace)
    return settings.model_copy(update={"index_alias": f"{namespace}-items", "mongo_db": namespace})


def baseline_objective(
    target: str, split: Split, *, k: int = 10, users: Sequence[int] | None = None
) -> Any:
    """``params -> validation NDCG@k`` of every user for a baseline target (``ALS`` or
    ``EASE``)."""
    stage = split.stage("validation")
    cls = {"ALS": ALS, "EASE": EASE}[target]

    def objective(params: dict[str, Any]) -> float:
        model = cls(**params).fit(stage)
        report = evaluate({target: model}, stage, k=k, users=users)
        return report.models[0].per_user[f"ndcg@{k}"]

    return objective


def served_objective(
    settings: Any,
    split: Split,
    *,
    k: int = 10,
    users: Sequence[int] | None = None,
    surface: str = "for_you",
) -> Any:
    """``params -> validation NDCG@k`` of every user through the served pipeline (replayed
    validation data)."""

    stage = split.stage("validation")

    def objective(params: dict[str, Any]) -> float:
        template, rerank, _ = split_params(params)
        # template overrides for the surface evaluated only (cold_start keeps its own)
        model = ServedRecommender(settings, params={surface: template}, rerank=rerank)
        report = evaluate({"served": model}, stage, k=k, users=users)
        return report.models[0].per_user[f"ndcg@{k}"]

    return objective
