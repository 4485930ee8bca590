"""Fencing an engine counter write whose outcome is unknown: did it land, and if not, make sure
it never does (the exposure counters' documents, ``signals._exposure``).

A counter write carries its writer's mark and a counter ignores a write whose mark it keeps
(``_counting.once_per_mark``). A write that failed without an answer (timed out, connection
cut) may still be in the engine — a paused node applies it when it wakes — so reading its mark
back (a ``mget``) said "not there" and the write landed afterwards: the call taking the events
over counted them a second time. A fence answers and settles in one atomic scripted update per
counter (the engine applies the updates of one document one after another): when the counter
keeps the mark, the write landed (``noop``); otherwise the mark is put among its marks (and
among its ``fenced`` marks, so a later fence does not take it for a landed write), and the
write, whenever it arrives, is ignored. So after a fence the write's fate is final, whatever
the interleaving.

The counter keeps its last ``MARKS_KEPT`` marks and fenced marks each: a fence adds to both
and a write only to ``marks``, so a mark still kept in ``marks`` is still in ``fenced`` when a
fence put it there. What a fence cannot see is a mark more than ``MARKS_KEPT`` writes of that
counter old (a write that landed long before its fence on a hot counter, counted again; or a
late write arriving after that many others, counted again too).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._exceptions import SearchBackendError

from ._counting import KEEP_MARK_SCRIPT, MARKS_KEPT
from ._engine_bulk import Pair, bulk_updates

__all__ = ["FENCE_SCRIPT", "fence", "fence_pairs"]

#: landed (the mark kept, not by a fence): noop; fenced before: left as it is (an update);
#: neither: the mark kept as fenced and among the marks (the write is then ignored)
FENCE_SCRIPT = (
    """
boolean kept = ctx._source.marks != null && ctx._source.marks.contains(params.mark);
boolean fenced = ctx._source.fenced != null && ctx._source.fenced.contains(params.mark);
if (kept && !fenced) { ctx.op = 'noop'; } else if (!kept) {
  if (ctx._source.fenced == null) { ctx._source.fenced = new ArrayList(); }
  ctx._source.fenced.add(params.mark);
  while (ctx._source.fenced.size() > params.keep) { ctx._source.fenced.remove(0); }
"""
    + KEEP_MARK_SCRIPT
    + "}"
)


def fence_pairs(index: str, marks: Iterable[tuple[str, str]]) -> list[Pair]:
    """Pure: the ``_bulk`` items fencing each ``(item id, mark)`` (a counter not written yet
    is created holding the fenced mark only: the write that creates it is then ignored)."""
    pairs = []
    for item_id, mark in sorted(set(marks)):
        params = {"mark": mark, "keep": MARKS_KEPT}
        source = {
            "script": {"lang": "painless", "source": FENCE_SCRIPT, "params": params},
            "upsert": {"item_id": item_id},
            "scripted_upsert": True,
            "_source": ["count", "cap", "window_start"],  # a landed write's: at its cap?
        }
        pairs.append(
            ({"update": {"_index": index, "_id": item_id, "retry_on_conflict": 5}}, source)
        )
    return pairs


async def fence(
    client: AsyncOpenSearch, index: str, marks: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Fence each ``(item id, mark)`` (one ``_bulk`` per mark of a counter, 429s sent again);
    returns those whose write had landed, with their counter's ``count``, ``cap`` and
    ``window_start`` (the write may have brought it to its cap). A counter not answered
    raises :class:`~opendisco.SearchBackendError`: not knowing is a failure to retry, never
    "not landed"."""
    rounds: list[dict[str, str]] = []  # each counter once per bulk: its answer is by id
    for item_id, mark in sorted(set(marks)):
        free = next((r for r in rounds if item_id not in r), None)
        if free is None:
            rounds.append(free := {})
        free[item_id] = mark
    landed = {}
    for one in rounds:
        pairs = fence_pairs(index, one.items())
        applied, failed, _unsure = await bulk_updates(
            client, pairs, "fencing counter writes failed"
        )
        if failed:
            raise SearchBackendError(f"fencing counter writes failed: {list(failed.items())[:3]}")
        for res in applied:
            if res.get("result") == "noop":
                landed[(res["_id"], one[res["_id"]])] = (res.get("get") or {}).get("_source") or {}
    return landed
