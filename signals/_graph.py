"""Co-engagement graph (item–item; mutual likes: ``_members``, inbound attention: ``_inbound``).

It lives in MongoDB and grows incrementally from events (one ``bulk_write`` per batch):

* ``item_adjacency``: one document per item, ``{_id: src, n: "<JSON {dst: w}>", k, updated_at, ms}``
  (both directions stored; ``ms``: the last writing calls' marks). The neighbour map is one string
  field on purpose: FerretDB 1.x converts every field of a document on each read and write (a
  popular item has thousands of neighbours), while a string costs about as much as its bytes. Only
  ``_id`` lookups (equality and ``$in``) use an index there (any other field is a full scan), so a
  batch of events reads and rewrites each touched source item by ``_id`` once — its increments
  coalesced — under per-item leases in ``item_adjacency_locks`` (FerretDB updates are not atomic
  read-modify-writes), and a request reads the neighbours of its recent items with one ``find`` by
  ``_id``. A serving process may keep the rows its requests read for ``cache_s``
  (``graph_cache_s``): the edges are a soft signal (candidates and a feature, never a hard rule),
  popular items' rows are read by most requests, and a cached row saves the round trip and the
  decoding; the writer (:meth:`ItemGraph.add`) never reads the cache.

Increments are at-least-once: a batch re-applied after a crash between the graph write and the
event's ``applied`` mark adds its weights twice (see ``opendisco.signals``); a write whose
answer was lost is read back by the writer's mark (``ms`` on each row, :meth:`ItemGraph.fence`)
and not added again; concurrent batches never lose each other's increments (leases).

A marked write is guarded by its mark (``_store_fence``): the check of a write that failed
without an answer fences it (:meth:`ItemGraph.fence`), and a call taking events over fences
the marks of their earlier holders on its rows before it reads them, then leaves out, row by
row, the increments of events whose earlier holder's mark the row keeps (``landed_if`` of
:meth:`ItemGraph.add`): a write that landed late, or for some rows only (its bulk cut
part-way), is not added again (seen with ``TcpProxy.hold_if``: a batch's edges counted twice).
A row is rewritten whole (``$set`` of the string): a write that lands late — after its lease
ended — and before its fence puts back the row it read, without what was written since.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from opendisco._backend import backend_errors
from opendisco._cache import TTLCache
from opendisco._store import lease

from ._store_fence import fence_marks, guard, write_guarded
from ._user_state import UserState

__all__ = [
    "ITEM_EDGES",
    "ITEM_LOCKS",
    "RECENT_FANOUT",
    "SEP",
    "ItemGraph",
    "adjacency_updates",
    "co_engagement_links",
    "co_engagement_pairs",
    "decode_row",
    "encode_row",
    "merge_rows",
    "summed_weights",
    "top_neighbours",
]

ITEM_EDGES = "item_adjacency"
ITEM_LOCKS = "item_adjacency_locks"
#: how many of a user's most recent positives the graph source and feature start from
RECENT_FANOUT = 20
SEP = "\x1f"
#: ids per ``find({_id: {$in: ...}})`` (one round trip for a request's recent items)
READ_CHUNK = 500


#: the last writers' marks a row keeps (``ms``; ``ItemGraph.fence``)
MARKS_KEPT = 16


def _rewritten(
    old: Any, inc: Mapping[str, float], mark: str | None, now: datetime
) -> dict[str, Any]:
    """Pure: the update of a row as read (``old``: a :class:`_Marked` row, None when new) with
    the increments ``inc`` and the writer's ``mark`` (kept, and guarding the write)."""
    row = merge_rows(old or {}, inc)
    doc = {"n": encode_row(row), "k": len(row), "updated_at": now}
    marks = list(getattr(old, "marks", []))
    if mark is not None:
        doc["ms"] = [*marks, mark][-MARKS_KEPT:]
        return {"$set": doc, **guard(mark)}
    if marks:
        doc["ms"] = marks
    return {"$set": doc}


class _Marked(dict[str, float]):
    """A row's neighbour map with the marks of its last writers (``marks``)."""

    def __init__(self, row: Mapping[str, float], marks: Sequence[str]) -> None:
        super().__init__(row)
        self.marks = list(marks)


async def _find(coll: Any, flt: Mapping[str, Any], **kw: Any) -> list[dict[str, Any]]:
    with backend_errors(f"{coll.name} lookup failed"):
        return await coll.find(flt, **kw).to_list(None)


def encode_row(row: Mapping[str, float]) -> str:
    """Pure: a neighbour map as the stored string (JSON, keys sorted: stable bytes)."""
    return json.dumps({k: float(v) for k, v in row.items()}, sort_keys=True, separators=(",", ":"))


def decode_row(text: str | None) -> dict[str, float]:
    """Pure: the stored string back to ``{dst: w}`` (empty for a missing row)."""
    if not text:
        return {}
    return {str(k): float(v) for k, v in json.loads(text).items()}


def merge_rows(row: Mapping[str, float], inc: Mapping[str, float]) -> dict[str, float]:
    """Pure: ``row`` with ``inc`` added key by key."""
    out = dict(row)
    for k, w in inc.items():
        out[k] = out.get(k, 0.0) + float(w)
    return out


def adjacency_updates(
    pairs: Iterable[tuple[str, str, float]],
) -> dict[str, dict[str, float]]:
    """Pure: symmetric co-engagement increments grouped by source item,
    ``{src: {dst: summed weight}}`` (self-loops dropped, repeated pairs summed)."""
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for a, b, w in pairs:
        if a == b:
            continue
        acc[a][b] += float(w)
        acc[b][a] += float(w)
    return {s: dict(d) for s, d in acc.items()}


def co_engagement_links(
    states: Mapping[str, UserState],
    by_user: Mapping[str, Sequence[Mapping[str, Any]]],
    fanout: int,
    linked: Container[str] | None = None,
) -> list[tuple[str, tuple[str, str, float]]]:
    """Pure: each new positive linked to the member's ``fanout`` most recent positives merged
    before it: an event an earlier, failed application merged already, to those merged before
    it (``applied`` order), whichever calls hold the others now; one this call merges, to every
    stored positive and this call's earlier ones. Every application of an event makes the same
    pairs and each pair is made once, by its later event, however the member's events are
    split between calls (a cut at a call's first merged event left out what was merged after
    it: the pairs between events two takers split were made by nobody). With ``linked``, only
    those event ids' pairs. Each pair with the id of the event that made it."""
    links: list[tuple[str, tuple[str, str, float]]] = []
    for user, evs in by_user.items():
        state = states[user]
        order = {e: i for i, e in enumerate(state.applied)}
        new = {e["id"] for e in evs if e["id"] not in order}
        recent = state.positive_ids_merged_before(math.inf, new)[:fanout]
        for ev in sorted(evs, key=lambda e: e["ts"]):
            if ev["weight"] <= 0:
                continue
            merged = ev["id"] in order
            before = state.positive_ids_merged_before(order[ev["id"]], new) if merged else recent
            if linked is None or ev["id"] in linked:
                item = ev["item_id"]
                links += [(ev["id"], (item, r, 1.0)) for r in before[:fanout] if r != item]
            if not merged:
                recent = [ev["item_id"], *recent][:fanout]
    return links


def co_engagement_pairs(
    states: Mapping[str, UserState],
    by_user: Mapping[str, Sequence[Mapping[str, Any]]],
    fanout: int,
    linked: Container[str] | None = None,
) -> list[tuple[str, str, float]]:
    """Pure: the pairs of :func:`co_engagement_links`."""
    return [pair for _, pair in co_engagement_links(states, by_user, fanout, linked)]


def row_increments(
    pairs: Sequence[tuple[str, str, float]],
    rows: Mapping[str, Any],
    landed_if: Sequence[Collection[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Pure: :func:`adjacency_updates` of ``pairs``, without a pair's increment of a row whose
    marks (``rows[src].marks``) include one of ``landed_if[i]`` (pair ``i``'s event's earlier
    holders' marks: their write of that row landed)."""
    if not landed_if:
        return adjacency_updates(pairs)
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (a, b, w), marks in zip(pairs, landed_if, strict=True):
        if a == b:
            continue
        for src, dst in ((a, b), (b, a)):
            if not set(marks) & set(getattr(rows.get(src), "marks", ())):
                acc[src][dst] += float(w)
    return {s: dict(d) for s, d in acc.items()}


class ItemGraph:
    """Item–item co-engagement weights (one adjacency document per item, see the module doc)."""

    #: a batch's lease on its source items outlives a crashed writer by this long
    lease_s = 60.0
    lock_wait_s = 30.0

    def __init__(
        self, db: Any, *, cache_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.coll = db[ITEM_EDGES]
        self.locks = db[ITEM_LOCKS]
        #: rows requests read, kept ``cache_s`` (an item without a row is kept as empty)
        self._cache = TTLCache(cache_s, clock=clock) if cache_s > 0 else None

    async def add(
        self,
        pairs: Iterable[tuple[str, str, float]],
        now: datetime | None = None,
        *,
        mark: str | None = None,
        landed_if: Sequence[Collection[str]] | None = None,
    ) -> int:
        """Add co-engagement weight between item pairs: each distinct source item is read and
        rewritten once (under its lease), in chunked bulk writes; returns directed edges
        touched. ``mark`` (the writing call's token) is stored on each row written, so a
        call whose write failed on the way back can tell whether it landed (:meth:`fence`).
        ``landed_if`` (one per pair): marks of earlier writes of the pair's event; a row that
        keeps one of them got the pair's increment already (:func:`row_increments`)."""
        now = now or datetime.now(UTC)
        pairs = list(pairs)
        srcs = adjacency_updates(pairs)
        if not srcs:
            return 0
        async with lease(
            self.locks, srcs, lease_s=self.lease_s, wait_s=self.lock_wait_s, what=ITEM_EDGES
        ):
            earlier: dict[str, set[str]] = {}  # an earlier holder's mark -> its rows here
            for (a, b, _w), marks in zip(pairs, landed_if or [], strict=False):
                for m in marks:
                    earlier.setdefault(m, set()).update((a, b))
            for m, rows in sorted(earlier.items()):  # landed, or never: then read
                await fence_marks(self.coll, sorted(rows), m, now)
            current = await self._rows(list(srcs), with_marks=True)
            incs = row_increments(pairs, current, landed_if)
            ops = [
                UpdateOne({"_id": src}, _rewritten(current.get(src), inc, mark, now), upsert=True)
                for src, inc in sorted(incs.items())
            ]
            await write_guarded(self.coll, ops)
        return sum(len(row) for row in srcs.values())

    async def fence(self, pairs: Iterable[tuple[str, str, float]], mark: str) -> bool:
        """Whether :meth:`add` of ``pairs`` with ``mark`` landed: every source row keeps the
        mark among its last :data:`MARKS_KEPT` writers' (more later writers of a row push it
        out: then this answers no although the write landed). On the rows it did not reach
        it is fenced first (``_store_fence``): it never lands after this answer. Not all:
        the call taking the events over adds only to the rows without it (:meth:`add`)."""
        srcs = list(adjacency_updates(pairs))
        if not srcs:
            return True
        async with lease(
            self.locks, srcs, lease_s=self.lease_s, wait_s=self.lock_wait_s, what=ITEM_EDGES
        ):
            await fence_marks(self.coll, srcs, mark)
            docs = await _find(self.coll, {"_id": {"$in": srcs}}, projection={"ms": 1})
        return len(docs) == len(srcs) and all(mark in (d.get("ms") or []) for d in docs)

    async def _rows(
        self, item_ids: Iterable[str], *, with_marks: bool = False
    ) -> dict[str, dict[str, float]]:
        """``{item: {dst: w}}`` for the ``item_ids`` that have a row: one ``find`` by ``_id``
        per :data:`READ_CHUNK` ids (``_id`` lookups, ``$in`` included, use the primary key);
        ``with_marks``: each row a :class:`_Marked` dict that also holds the row's marks."""
        src = list(dict.fromkeys(item_ids))
        out: dict[str, dict[str, float]] = {}
        fields = {"n": 1, "ms": 1} if with_marks else {"n": 1}
        for k in range(0, len(src), READ_CHUNK):
            docs = await _find(
                self.coll, {"_id": {"$in": src[k : k + READ_CHUNK]}}, projection=fields
            )
            for d in docs:
                row = decode_row(d.get("n"))
                out[d["_id"]] = _Marked(row, d.get("ms") or []) if with_marks else row
        return out

    async def _read_rows(self, item_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """:meth:`_rows` for a request: from the cache when it holds them (see ``cache_s``)."""
        if self._cache is None:
            return await self._rows(item_ids)
        rows, miss = self._cache.get_many(list(dict.fromkeys(item_ids)))
        if miss:
            got = await self._rows(miss)
            fresh = {i: got.get(i, {}) for i in miss}
            self._cache.put_many(fresh)
            rows.update(fresh)
        return {i: row for i, row in rows.items() if row}

    async def weights(self, item_ids: Iterable[str]) -> dict[str, float]:
        """Summed edge weight from ``item_ids`` to every co-engaged item (one point read per
        source item). It is both the graph candidate source (:func:`top_neighbours`) and the
        graph proximity feature of those candidates, so a request reads the edges once."""
        return summed_weights((await self._read_rows(item_ids)).values())

    async def weights_of(self, *groups: Sequence[str]) -> list[dict[str, float]]:
        """:meth:`weights` of each group of source items, all rows read in one ``find``
        (a request's recent positives and its matched profiles: one round trip, not two)."""
        if not any(groups):
            return [{} for _ in groups]
        rows = await self._read_rows([i for g in groups for i in g])
        return [summed_weights(rows[i] for i in dict.fromkeys(g) if i in rows) for g in groups]

    async def proximity(self, recent: Iterable[str], candidates: Iterable[str]) -> dict[str, float]:
        """Summed edge weight from the user's recent items to each candidate."""
        src, dst = list(dict.fromkeys(recent)), set(candidates)
        if not src or not dst:
            return {}
        weights = await self.weights(src)
        return {d: w for d, w in weights.items() if d in dst}


def summed_weights(
    rows: Iterable[Mapping[str, float]], scales: Iterable[float] | None = None
) -> dict[str, float]:
    """Pure: the summed weight to every destination over ``rows`` (one row per source), each
    row multiplied by its entry of ``scales`` when given (same order and length)."""
    acc: dict[str, float] = defaultdict(float)
    rows = list(rows)
    factors = [1.0] * len(rows) if scales is None else list(scales)
    for row, scale in zip(rows, factors, strict=True):
        for d, w in row.items():
            acc[d] += scale * w
    return dict(acc)


def top_neighbours(
    weights: Mapping[str, float], k: int, skip: Iterable[str] = ()
) -> list[tuple[str, float]]:
    """Pure: the ``k`` heaviest entries of ``weights`` not in ``skip``, best first."""
    drop = set(skip)
    kept = ((i, w) for i, w in weights.items() if i not in drop)
    return sorted(kept, key=lambda kv: (-kv[1], kv[0]))[:k]
