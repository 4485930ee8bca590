"""LambdaMART (LightGBM ``lambdarank``) as the learned scoring step.

Training data are logged impressions: the serving path records the feature row it scored
(``features``, in :data:`FEATURE_NAMES` order) and a ``request_id`` on each impression event;
the label of an impression is the strongest later outcome of the same user on the same item
(click 1, like/message 2, match 3; 0 otherwise). ``LearnedScorer`` plugs into
``Reranker(config, scorer=...)`` in place of the linear model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from opendisco._exceptions import ConfigError

from ._types import FEATURE_NAMES

__all__ = ["LABELS", "LearnedScorer", "lambdamart_dataset", "train_lambdamart"]

LABELS: dict[str, int] = {"click": 1, "like": 2, "message": 2, "match": 3}


def lambdamart_dataset(
    events: Iterable[Mapping[str, Any]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure: ``(X, y, group sizes)`` from raw events (impressions with ``request_id`` and
    ``features`` of the right width; outcomes label them). Requests without any positive or
    with a single impression are dropped (no pairs to learn from)."""
    impressions: dict[str, list[tuple[str, str, list[float]]]] = defaultdict(list)
    outcome: dict[tuple[str, str], int] = {}
    for ev in events:
        kind = ev.get("type")
        if kind == "impression":
            f, rid = ev.get("features"), ev.get("request_id")
            if rid and f is not None and len(f) == len(FEATURE_NAMES):
                impressions[rid].append((ev["user_id"], ev["item_id"], list(f)))
        elif kind in LABELS:
            key = (ev["user_id"], ev["item_id"])
            outcome[key] = max(outcome.get(key, 0), LABELS[kind])
    X, y, groups = [], [], []
    for rid in sorted(impressions):
        rows = impressions[rid]
        labels = [outcome.get((u, i), 0) for u, i, _ in rows]
        if len(rows) < 2 or max(labels) == 0:
            continue
        X += [f for _, _, f in rows]
        y += labels
        groups.append(len(rows))
    return (
        np.asarray(X, dtype=np.float64).reshape(-1, len(FEATURE_NAMES)),
        np.asarray(y, dtype=np.int32),
        np.asarray(groups, dtype=np.int32),
    )


class LearnedScorer:
    """A LightGBM booster scoring the feature matrix (a ``Scorer``)."""

    def __init__(self, booster: Any) -> None:
        self.booster = booster

    def score(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(X, num_threads=1), dtype=np.float64)

    def save(self, path: str | Path) -> None:
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path: str | Path) -> LearnedScorer:
        """A saved booster; :class:`ConfigError` when it was trained on other features than
        :data:`FEATURE_NAMES` (LightGBM stores the names in the model file)."""
        import lightgbm as lgb

        try:
            booster = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as exc:
            raise ConfigError(f"model file {path}: not a LightGBM model: {exc}") from exc
        names = tuple(booster.feature_name())
        if names != FEATURE_NAMES:
            raise ConfigError(
                f"model file {path} was trained on features {list(names)}; this reranker "
                f"computes {list(FEATURE_NAMES)}: retrain it (`opendisco train ltr`)"
            )
        return cls(booster)


def train_lambdamart(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    rounds: int = 100,
    learning_rate: float = 0.1,
    num_leaves: int = 15,
    seed: int = 0,
) -> LearnedScorer:
    """Fit a lambdarank booster on grouped impressions."""
    import lightgbm as lgb

    if len(groups) == 0:
        raise ValueError("no request with both impressions and an outcome to learn from")
    ds = lgb.Dataset(X, label=y, group=groups, feature_name=list(FEATURE_NAMES))
    params = {
        "objective": "lambdarank",
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": 5,
        "verbosity": -1,
        "seed": seed,
        "num_threads": 1,
        "deterministic": True,
    }
    return LearnedScorer(lgb.train(params, ds, num_boost_round=rounds))
