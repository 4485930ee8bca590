"""Live trending: decayed like/match counts per item, kept on the exposure counter documents.

Each like or match adds its weight to the item's count, decayed from the moment it happened
with half-life ``trending_half_life_hours``: the stored pair (``trend``, ``trend_at``) is the
value at ``trend_at``, and its value at time *T* is ``trend · 2^(−(T − trend_at)/h)``; an item
nobody liked for ``trending_window_hours`` counts 0. Late or replayed events count as of when
they happened (:func:`trend_increments` decays a batch's likes to the latest of them, and the
painless update brings the stored value to the later of the two times before adding). The
I/O is :meth:`opendisco.signals.ExposureStore.record_trend` (one scripted ``_bulk``) and
:meth:`~opendisco.signals.ExposureStore.trending` (the top items, scored in the engine).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ._counting import TOUCHED, marked, once_per_mark

__all__ = [
    "TREND_PROPERTIES",
    "TREND_UPDATE_SCRIPT",
    "TREND_VALUE_SCRIPT",
    "decayed",
    "epoch_ms",
    "rate_per_day",
    "trend_increments",
    "trend_update_actions",
    "trending_query",
]

TREND_PROPERTIES: dict[str, Any] = {
    "trend": {"type": "double"},
    "trend_at": {"type": "date", "format": "epoch_millis"},
}

# decayed like/match count: bring the stored value to the later of (trend_at, t), add w there
TREND_UPDATE_SCRIPT = once_per_mark(
    """
double hl = params.half_life;
if (ctx._source.trend == null || ctx._source.trend_at == null) {
  ctx._source.trend = 0.0; ctx._source.trend_at = params.at;
}
long ref = ctx._source.trend_at;
if (params.at > ref) {
  ctx._source.trend = ctx._source.trend * Math.pow(2.0, (ref - params.at) / hl) + params.w;
  ctx._source.trend_at = params.at;
} else {
  ctx._source.trend = ctx._source.trend + params.w * Math.pow(2.0, (params.at - ref) / hl);
}
"""
    + TOUCHED
)

# the decayed value of a counter at params.now (0 outside the window)
TREND_VALUE_SCRIPT = (
    "if (doc['trend'].size() == 0 || doc['trend_at'].size() == 0) { return 0.0; } "
    "double age = params.now - doc['trend_at'].value.toInstant().toEpochMilli(); "
    "return doc['trend'].value * Math.pow(2.0, -Math.max(age, 0) / params.half_life);"
)


def epoch_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def decayed(
    trend: float, trend_at_ms: int, now_ms: int, half_life_ms: float, window_ms: float
) -> float:
    """Pure: a stored decayed count's value at ``now_ms`` (0 once it is older than the window)."""
    age = now_ms - trend_at_ms
    if age >= window_ms:
        return 0.0
    return float(trend) * 2.0 ** (-max(age, 0) / half_life_ms)


def rate_per_day(count: Any, half_life_hours: float) -> Any:
    """Pure: the rate per day a decayed count stands for — a steady rate of r events per day
    decayed with half-life h (days) holds r · h / ln 2, so the rate is count · ln 2 / h.
    Scalars or arrays."""
    return count * math.log(2.0) * 24.0 / half_life_hours


def trend_increments(
    likes: Iterable[tuple[str, datetime, float]], half_life_ms: float
) -> dict[str, tuple[int, float]]:
    """Pure: per item, ``(reference ms, weight)`` — the batch's likes decayed to the latest of
    them (one scripted update per item)."""
    per: dict[str, list[tuple[int, float]]] = {}
    for item, ts, w in likes:
        per.setdefault(str(item), []).append((epoch_ms(ts), float(w)))
    out = {}
    for item, rows in per.items():
        ref = max(t for t, _ in rows)
        out[item] = (ref, sum(w * 2.0 ** ((t - ref) / half_life_ms) for t, w in rows))
    return out


def trend_update_actions(
    index: str,
    incs: dict[str, tuple[int, float]],
    half_life_ms: float,
    now_ms: int,
    mark: str | None = None,
) -> list[dict[str, Any]]:
    """Pure: the ``_bulk`` body adding :func:`trend_increments` to the counter documents (one
    scripted upsert per item; ``now_ms``: when written, on the writer's clock — the copies'
    ``touched_at`` is the engine's, ``_counting.TOUCHED``; ``mark`` kept on each, as the
    exposure counts keep theirs)."""
    body: list[dict[str, Any]] = []
    for item_id, (at, w) in sorted(incs.items()):
        params = marked({"at": at, "w": w, "half_life": half_life_ms, "now": now_ms}, mark)
        body.append({"update": {"_index": index, "_id": item_id, "retry_on_conflict": 5}})
        body.append(
            {
                "script": {"lang": "painless", "source": TREND_UPDATE_SCRIPT, "params": params},
                "upsert": {"item_id": item_id},
                "scripted_upsert": True,
            }
        )
    return body


def trending_query(k: int, now_ms: int, window_ms: float, half_life_ms: float) -> dict[str, Any]:
    """Pure: the search for the ``k`` items with the highest live count at ``now_ms``, scored
    in the engine (items nobody liked within ``window_ms`` are not considered)."""
    return {
        "size": k,
        "_source": False,
        "query": {
            "script_score": {
                "query": {"range": {"trend_at": {"gt": now_ms - int(window_ms)}}},
                "script": {
                    "source": TREND_VALUE_SCRIPT,
                    "params": {"now": now_ms, "half_life": half_life_ms},
                },
            }
        },
    }
