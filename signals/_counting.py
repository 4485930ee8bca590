"""The exposure counters' engine side (pure): the painless scripts and the ``_bulk`` items of
one :meth:`~opendisco.signals.ExposureStore.record` (one scripted upsert per item)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CAPPED_SCRIPT",
    "COUNT_SCRIPT",
    "KEEP_MARK_SCRIPT",
    "MARKS_KEPT",
    "MARK_PROPERTIES",
    "TOUCHED",
    "count_pairs",
    "marked",
    "once_per_mark",
]

#: the last writers' marks a counter document keeps (``marks``): a writer marks what it
#: writes, so when the answer is lost it can tell whether the write landed (an event
#: batch's call: ``_fence``), or send the write again with the same mark (a served flush):
#: a counter that keeps the mark already ignores it (:func:`once_per_mark`)
MARKS_KEPT = 16
#: ``fenced``: the marks of those among ``marks`` a fence put there, not a write
#: (``signals._fence``)
MARK_PROPERTIES: dict[str, Any] = {
    "marks": {"type": "keyword", "index": False, "doc_values": False},
    "fenced": {"type": "keyword", "index": False, "doc_values": False},
}
#: appended to a counter script: keep ``params.mark`` among the last ``params.keep`` marks
KEEP_MARK_SCRIPT = """
if (params.containsKey('mark')) {
  if (ctx._source.marks == null) { ctx._source.marks = new ArrayList(); }
  ctx._source.marks.add(params.mark);
  while (ctx._source.marks.size() > params.keep) { ctx._source.marks.remove(0); }
}
"""


def once_per_mark(body: str) -> str:
    """Pure: a counter script that applies ``body`` and keeps ``params.mark`` (when given)
    unless the counter keeps that mark already: then the update is a no-op (``noop``, its
    ``_source`` answered as for any update), so a write sent again with its mark is applied
    once."""
    seen = (
        "params.containsKey('mark') && ctx._source.marks != null"
        " && ctx._source.marks.contains(params.mark)"
    )
    return f"if ({seen}) {{ ctx.op = 'noop'; }} else {{{body}{KEEP_MARK_SCRIPT}}}"


#: a counter's ``touched_at`` (what the copies' incremental reads select by): the engine's clock
#: when the write is applied (``ctx._now``), not the writer's ``params.now`` — a write the
#: engine applied seconds after its writer began (a paused node, a full write queue) was older
#: than every later read's overlap: the copy never read it, and the process that served those
#: impressions forgot them ``visible_s`` after the write (an item at its cap shown again)
TOUCHED = "ctx._source.touched_at = ctx._now;"

# one counter document per item: tumbling window, then add; report whether it is at its cap
COUNT_SCRIPT = once_per_mark(
    """
if (ctx._source.window_start == null || params.now - ctx._source.window_start >= params.window) {
  ctx._source.window_start = params.now;
  ctx._source.count = 0;
}
ctx._source.count += params.n;
"""
    + TOUCHED
    + """
ctx._source.cap = params.cap;
if (ctx._source.paced == null || ctx._source.paced_at == null) {
  ctx._source.paced = 0.0; ctx._source.paced_at = params.now;
}
double dt = params.now - ctx._source.paced_at;
if (dt > 0) {
  ctx._source.paced = ctx._source.paced * Math.exp(-dt / params.window);
  ctx._source.paced_at = params.now;
}
ctx._source.paced += params.n;
"""
)

# the list document: add newly capped ids with their window end, drop expired ones
CAPPED_SCRIPT = """
if (ctx._source.capped == null) { ctx._source.capped = ['ids': [], 'until': [:]]; }
Map until = ctx._source.capped.until;
for (entry in params.add.entrySet()) { until.put(entry.getKey(), entry.getValue()); }
until.entrySet().removeIf(e -> e.getValue() <= params.now);
ctx._source.capped.ids = new ArrayList(until.keySet());
"""


def marked(params: dict[str, Any], mark: str | None) -> dict[str, Any]:
    """Pure: a counter script's ``params`` with ``mark`` (when given) for :func:`once_per_mark`."""
    return params if mark is None else {**params, "mark": mark, "keep": MARKS_KEPT}


def count_pairs(
    index: str,
    batch: Mapping[str, int],
    caps: Mapping[str, int],
    now_ms: int,
    window_ms: int,
    mark: str | None = None,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pure: ``(action, source)`` of each item's counter upsert (``batch``: impressions per
    id), answering the counter's ``count``, ``cap`` and ``window_start``; ``mark`` is kept
    on each counter written (:func:`once_per_mark`)."""
    pairs = []
    for item_id in sorted(batch):
        params = {"n": batch[item_id], "cap": caps[item_id], "now": now_ms, "window": window_ms}
        params = marked(params, mark)
        upsert = {"item_id": item_id, "count": 0, "cap": caps[item_id], "window_start": now_ms}
        source = {
            "script": {"lang": "painless", "source": COUNT_SCRIPT, "params": params},
            "upsert": upsert,
            "scripted_upsert": True,
            "_source": ["count", "cap", "window_start"],
        }
        pairs.append(
            ({"update": {"_index": index, "_id": item_id, "retry_on_conflict": 5}}, source)
        )
    return pairs
