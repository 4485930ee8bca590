"""Pre-registrable metrics: ratios of per-impression outcomes (numerator / impressions).

Every metric is a ratio of sums over the randomisation units, so designs aggregate to their
unit and the analysis applies the delta method (:mod:`._analysis`). The outcome columns are
per impression: ``likes`` (the viewer liked the shown member), ``mutual`` (the like was
reciprocated: a mutual like), ``matches`` (it made a new match). Viewer-side units sum them
over what they were shown, candidate-side units over what they were shown *to*, so
``mutual_likes_per_1000`` is both "mutual likes per 1,000 impressions seen" and "per 1,000
impressions received".
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "Metric"]


@dataclass(frozen=True)
class Metric:
    name: str
    numerator: str  # an outcome column
    scale: float = 1000.0
    description: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "mutual_likes_per_1000", "mutual", description="Mutual likes per 1,000 impressions."
        ),
        Metric("likes_per_1000", "likes", description="Likes per 1,000 impressions."),
        Metric("matches_per_1000", "matches", description="New matches per 1,000 impressions."),
    )
}
