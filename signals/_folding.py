"""A member's vectors folded from the items' (pure): the content taste and the behaviour
vector, and which behaviour model a state's vector belongs to.

``behaviour_model`` names the trained model (:mod:`opendisco._published`: the version in
``<items>_behaviour``'s pointer; absent: none published) whose item vectors the behaviour
vector was folded from. Two ALS models' latent axes mean nothing to each other, so serving
does not search with a behaviour vector of another model than the one it serves (the
``behaviour`` source and feature sit the request out) and the recovery sweep folds it again
(``_repair``), unless the member's next event does first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np

from opendisco._published import Followed, behaviour_models
from opendisco._settings import Settings

from ._behaviour import fold_in
from ._user_state import UserState, UserStateConfig, aware

__all__ = [
    "BEHAVIOUR_POINTER_S",
    "as_served",
    "behaviour_vector",
    "decayed_vector",
    "followed_behaviour",
    "needs_refold",
    "recompute",
]

#: how long a process keeps the served behaviour model's version before reading its pointer
#: again: a new model is folded into states, and served, within this
BEHAVIOUR_POINTER_S = 30.0


def followed_behaviour(db: Any, settings: Settings) -> Followed:
    """The served behaviour model as a process follows it (its pointer read at most every
    :data:`BEHAVIOUR_POINTER_S`)."""
    return Followed(behaviour_models(db, settings), BEHAVIOUR_POINTER_S)


def _weights(entries: Sequence[Mapping[str, Any]], now: datetime, half_life_h: float) -> np.ndarray:
    ages = np.array([(now - aware(e["ts"])).total_seconds() / 3600.0 for e in entries])
    return np.array([float(e["w"]) for e in entries]) * np.exp2(-np.maximum(ages, 0) / half_life_h)


def decayed_vector(
    positives: Sequence[Mapping[str, Any]],
    negatives: Sequence[Mapping[str, Any]],
    vectors: Mapping[str, Sequence[float]],
    now: datetime,
    cfg: UserStateConfig,
) -> list[float] | None:
    """Pure: unit(Σ decayed wᵢ·vᵢ over positives − β·Σ decayed wⱼ·vⱼ over negatives)."""
    acc: np.ndarray | None = None
    for entries, sign in ((positives, 1.0), (negatives, -cfg.negative_weight)):
        have = [e for e in entries if vectors.get(e["id"]) is not None]
        if not have or sign == 0:
            continue
        w = _weights(have, now, cfg.half_life_hours)
        M = np.asarray([vectors[e["id"]] for e in have], dtype=np.float64)
        M /= np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)
        part = sign * (w @ M) / max(float(w.sum()), 1e-12)
        acc = part if acc is None else acc + part
    if acc is None:
        return None
    n = float(np.linalg.norm(acc))
    return (acc / n).tolist() if n > 1e-12 else None


def behaviour_vector(
    positives: Sequence[Mapping[str, Any]],
    behaviours: Mapping[str, Sequence[float]],
    now: datetime,
    cfg: UserStateConfig,
) -> list[float] | None:
    """Fold-in of the decayed positives' behaviour vectors (ALS user solve)."""
    have = [e for e in positives if behaviours.get(e["id"]) is not None]
    if not have:
        return None
    w = _weights(have, now, cfg.half_life_hours)
    u = fold_in(np.asarray([behaviours[e["id"]] for e in have]), w, regularization=cfg.fold_in_reg)
    return None if u is None else u.tolist()


def recompute(
    state: UserState,
    vectors: Mapping[str, Sequence[float]],
    behaviours: Mapping[str, Sequence[float]],
    now: datetime,
    cfg: UserStateConfig,
    behaviour_model: str | None = None,
) -> UserState:
    """The state's vectors folded again from the items' (``behaviours``: of the served
    behaviour model ``behaviour_model``, which the state then names)."""
    return replace(
        state,
        vector=decayed_vector(state.positives, state.negatives, vectors, now, cfg),
        behaviour=behaviour_vector(state.positives, behaviours, now, cfg),
        behaviour_model=behaviour_model,
        updated_at=now,
        vectors_stale=False,
    )


def needs_refold(state: UserState, behaviour_model: str | None) -> bool:
    """Pure: whether the state's vectors are to be folded again — merged without the items'
    vectors, or folded from another behaviour model than ``behaviour_model`` (served)."""
    return state.vectors_stale or state.behaviour_model != behaviour_model


def as_served(state: UserState, behaviour_model: str | None) -> UserState:
    """Pure: the state as a request under ``behaviour_model`` (served) uses it — without its
    behaviour vector when that was folded from another model (its axes mean nothing to the
    served items' vectors)."""
    if state.behaviour is None or state.behaviour_model == behaviour_model:
        return state
    return replace(state, behaviour=None)
