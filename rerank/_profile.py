"""The member's taste profile and the candidates' affinity to it (pure).

A :class:`MemberProfile` summarises the items of a member's recent positives: how often each
category and tag occurs among them, their typical age (``created_at``) and popularity.
:func:`profile_features` turns it into per-candidate columns for the ranker:

* ``category_affinity``: share of the recent positives in the candidate's category;
* ``tag_affinity``: mean, over the candidate's tags, of the share of recent positives carrying
  the tag (genres of a movie, interests of a profile);
* ``age_gap``: ``log1p(candidate age in days)`` minus the recent positives' mean of it (does
  this member take new or old items); ``newest_gap``: the same minus its smallest value
  (a candidate much newer than anything the member engaged with);
* ``pop_gap``: ``log1p(candidate popularity)`` minus the recent positives' mean of it (how
  mainstream this member's taste is).

Members without recent positives (or items without the field) get 0, never NaN: the linear
scorer multiplies every column.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from ._types import PROFILE_COLUMNS, CandidateBatch, _age_days

__all__ = ["PROFILE_FIELDS", "MemberProfile", "profile_features"]

#: item fields a profile is built from (what the feature store reads for recent positives)
PROFILE_FIELDS = ("category", "tags", "created_at", "popularity")


def _log_age(value: Any, now: datetime) -> float | None:
    age = _age_days(value, now)
    return float(np.log1p(age)) if np.isfinite(age) else None


@dataclass(frozen=True)
class MemberProfile:
    """Category/tag shares, mean log age and mean log popularity of the recent positives."""

    items: int = 0
    categories: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, float] = field(default_factory=dict)
    log_age: float | None = None
    log_age_newest: float | None = None
    log_popularity: float | None = None

    @classmethod
    def from_items(cls, docs: Sequence[Mapping[str, Any]], now: datetime) -> MemberProfile:
        """From the recent positives' item documents (fields :data:`PROFILE_FIELDS`)."""
        n = len(docs)
        if n == 0:
            return cls()
        cats = Counter(str(d["category"]) for d in docs if d.get("category"))
        tags = Counter(
            t for d in docs for t in dict.fromkeys(str(x) for x in (d.get("tags") or []))
        )
        ages = [a for d in docs if (a := _log_age(d.get("created_at"), now)) is not None]
        pops = [float(np.log1p(max(float(d.get("popularity") or 0.0), 0.0))) for d in docs]
        return cls(
            items=n,
            categories={c: k / n for c, k in cats.items()},
            tags={t: k / n for t, k in tags.items()},
            log_age=float(np.mean(ages)) if ages else None,
            log_age_newest=float(np.min(ages)) if ages else None,
            log_popularity=float(np.mean(pops)),
        )


def profile_features(batch: CandidateBatch, profile: MemberProfile) -> dict[str, np.ndarray]:
    """The module doc's columns (:data:`PROFILE_COLUMNS`) for every candidate of ``batch``."""
    n = len(batch)
    out = {name: np.zeros(n) for name in PROFILE_COLUMNS}
    if profile.items == 0 or n == 0:
        return out
    per_code = np.array([profile.categories.get(str(c), 0.0) for c in batch.categories] + [0.0])
    out["category_affinity"] = per_code[batch.category]  # code -1 picks the trailing 0
    items = batch.items or [{} for _ in range(n)]
    for r, it in enumerate(items):
        tags = list(dict.fromkeys(str(t) for t in (it.get("tags") or [])))
        if tags:
            out["tag_affinity"][r] = sum(profile.tags.get(t, 0.0) for t in tags) / len(tags)
    known = np.isfinite(batch.age_days)
    log_age = np.log1p(batch.age_days[known])
    if profile.log_age is not None and profile.log_age_newest is not None:
        out["age_gap"][known] = log_age - profile.log_age
        out["newest_gap"][known] = log_age - profile.log_age_newest
    if profile.log_popularity is not None:
        out["pop_gap"] = np.log1p(np.maximum(batch.popularity, 0.0)) - profile.log_popularity
    return out
