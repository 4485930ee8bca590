"""Inbound attention counters: the likes, matches and messages a member profile received, by day.

``inbound_items`` holds one document per item: ``{_id: item, d: {"YYYYMMDD": n}, last: "YYYYMMDD",
at, ms}`` (``at`` when last written, ``ms`` writing calls' marks by slot). A request reads its
candidates' counts with one ``find`` by ``_id`` — one document per candidate. The earlier layout
(collection ``inbound``, one document per item and day) made the same read ask for candidates ×
window days ids (3,500 in 4 chunks for 500 candidates over 7 days): 68 → 18 ms p50 on FerretDB for
500 candidates (bench/api's catalogue, 2,374 counters, load 8; issue 12). Counters written in that
layout are not read: counts restart from zero after the upgrade and are whole again once a window
has passed.

Day keys older than :data:`RETAIN_DAYS` are dropped by the item's later increments (an
``$unset`` of the :data:`PRUNE_DAYS` keys just past the horizon, in the same update); a read
sums only its window, so a key left behind by an item nobody liked in that span costs bytes,
never a wrong count. Reads ask for at most :data:`RETAIN_DAYS` days.

The pacing controller's periodic measurement (:meth:`InboundCounter.totals`) reads the items
whose ``last`` day is inside the window (an index on MongoDB, a scan on FerretDB).

Increments are at-least-once, like the graph's (see ``opendisco.signals``). A marked write
(the event processor's) keeps its mark in its slot of ``ms`` and is guarded by it: a write
that failed without an answer is settled by :meth:`InboundCounter.fence` — it landed, or it
never will (``_store_fence``: one held on its way past its client's timeout reached the store
after the call taking its events over had counted them, every like counted twice). Where one
update of a document is not atomic (FerretDB 1.x: concurrent ``$inc`` of one counter lost most
of them), a batch's increments and a fence run under leases on their items
(``inbound_items_locks``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from opendisco._backend import backend_errors
from opendisco._store import leased_unless_atomic

from ._copies import LocalCopy
from ._graph import _find
from ._store_fence import fence_marks, guard, write_guarded

__all__ = [
    "INBOUND",
    "INBOUND_LOCKS",
    "RETAIN_DAYS",
    "InboundCopy",
    "InboundCounter",
    "ensure_inbound_indexes",
    "window_total",
]

INBOUND = "inbound_items"
INBOUND_LOCKS = "inbound_items_locks"
#: days a counter keeps (the longest window a read may ask for)
RETAIN_DAYS = 28
#: keys past the horizon each increment drops
PRUNE_DAYS = 14
#: ids per ``find({_id: {$in: ...}})`` (FerretDB pushes ``$in`` lists of up to 1,000 down)
_ID_CHUNK = 1000


def _key(day: date) -> str:
    return day.strftime("%Y%m%d")


def _today(now: datetime | None) -> date:
    return (now or datetime.now(UTC)).astimezone(UTC).date()


def window_keys(days: int, now: datetime | None = None) -> list[str]:
    """Pure: the day keys of the last ``days`` days up to ``now`` (UTC), newest first."""
    if not 1 <= days <= RETAIN_DAYS:
        raise ValueError(f"an inbound window is 1..{RETAIN_DAYS} days, not {days}")
    today = _today(now)
    return [_key(today - timedelta(days=d)) for d in range(days)]


#: slots of a counter's writers' marks (``ms``): a later writer replaces a mark only when it
#: takes the same slot (bounded, and one ``$set`` on every backend)
MARK_SLOTS = 32


def mark_slot(mark: str) -> str:
    """Pure: the slot of ``mark`` (a hex token) in a counter's ``ms``."""
    return str(int(mark[-6:], 16) % MARK_SLOTS)


def window_total(doc: Mapping[str, Any], keys: Iterable[str]) -> int:
    """Pure: a counter document's count over the day ``keys``."""
    per_day = doc.get("d") or {}
    return sum(int(per_day.get(k) or 0) for k in keys)


def _received(docs: Iterable[Mapping[str, Any]], keys: list[str]) -> dict[str, int]:
    """Pure: ``{item: count over keys}`` of the counter documents that received any."""
    got = {str(d["_id"]): window_total(d, keys) for d in docs}
    return {i: n for i, n in got.items() if n > 0}


def increments(
    counts: Iterable[tuple[str, datetime]], now: datetime | None = None
) -> dict[str, dict[str, Any]]:
    """Pure: ``(item, when)`` attention events as one update per item (``$inc`` of its day
    keys, ``$unset`` of the keys just past the horizon, ``$max`` of its last day). Events older
    than the horizon are dropped: no read window reaches them."""
    horizon = _today(now) - timedelta(days=RETAIN_DAYS)
    acc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item, ts in counts:
        day = ts.astimezone(UTC).date()
        if day > horizon:
            acc[item][_key(day)] += 1
    stale = [f"d.{_key(horizon - timedelta(days=k))}" for k in range(PRUNE_DAYS)]
    at = now or datetime.now(UTC)  # when written: what the processes' copies read changes by
    return {
        item: {
            "$inc": {f"d.{k}": n for k, n in days.items()},
            "$unset": dict.fromkeys(stale, ""),
            "$max": {"last": max(days)},
            "$set": {"at": at},
        }
        for item, days in acc.items()
    }


async def ensure_inbound_indexes(db: Any) -> None:
    with backend_errors("inbound index creation failed"):
        await db[INBOUND].create_index("last")
        await db[INBOUND].create_index("at")


class InboundCounter:
    """Attention received per item per day; summed over a recent window."""

    #: a batch's lease on its items outlives a crashed writer by this long
    lease_s = 10.0
    lock_wait_s = 30.0

    def __init__(self, db: Any) -> None:
        self.db = db
        self.coll = db[INBOUND]

    async def add(
        self,
        counts: Iterable[tuple[str, datetime]],
        now: datetime | None = None,
        *,
        mark: str | None = None,
    ) -> None:
        """Add the attention ``counts`` (item, when) in one bulk of ``$inc`` upserts, under the
        items' leases where updates are not atomic (module docstring). ``mark`` (the writing
        call's token) is set on each counter written, in its slot of ``ms``, and guards the
        write: refused on a counter that fenced it (:meth:`fence`)."""
        updates = increments(counts, now)
        if not updates:
            return
        if mark is not None:
            for update in updates.values():
                update["$set"][f"ms.{mark_slot(mark)}"] = mark
                update.update(guard(mark))
        ops = [UpdateOne({"_id": item}, update, upsert=True) for item, update in updates.items()]
        async with self._leased(updates):
            await write_guarded(self.coll, ops)

    async def fence(self, items: Iterable[str], mark: str, now: datetime | None = None) -> set[str]:
        """Of ``items``, those whose :meth:`add` with ``mark`` landed; on the others it is
        fenced (``_store_fence``): it never counts, should it reach the store later. Asked
        again, the same answer. A landed write whose mark a later writer of its slot replaced
        is taken for not landed (the other writer's mark in its place)."""
        wanted = list(dict.fromkeys(items))
        if not wanted:
            return set()
        async with self._leased(wanted):
            await fence_marks(self.coll, wanted, mark, now)
            docs = await _find(self.coll, {"_id": {"$in": wanted}}, projection={"ms": 1})
        slot = mark_slot(mark)
        return {str(d["_id"]) for d in docs if (d.get("ms") or {}).get(slot) == mark}

    def _leased(self, items: Iterable[str]) -> Any:
        return leased_unless_atomic(
            self.db, INBOUND_LOCKS, items, lease_s=self.lease_s, wait_s=self.lock_wait_s,
            what=INBOUND,
        )  # fmt: skip

    async def totals(self, days: int = 7, now: datetime | None = None) -> dict[str, int]:
        """Attention received per item over the last ``days`` days, for every item that
        received any (the pacing controller's periodic measurement, not a request-path read)."""
        keys = window_keys(days, now)
        docs = await _find(self.coll, {"last": {"$gte": keys[-1]}}, projection={"d": 1})
        return _received(docs, keys)

    async def counts(
        self, ids: Iterable[str], days: int = 7, now: datetime | None = None
    ) -> dict[str, int]:
        """Attention received over the last ``days`` days by each of ``ids`` that received any
        (one ``find`` by ``_id`` per 1,000 ids, issued together)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        keys = window_keys(days, now)
        chunks = await asyncio.gather(
            *(
                _find(self.coll, {"_id": {"$in": wanted[i : i + _ID_CHUNK]}}, projection={"d": 1})
                for i in range(0, len(wanted), _ID_CHUNK)
            )
        )
        return _received((d for docs in chunks for d in docs), keys)


class _InboundRows:
    """Inbound counters (``{day: n}`` per item) as a copy's source (``signals._copies``)."""

    what = "inbound attention"

    def __init__(self, db: Any) -> None:
        self.coll = db[INBOUND]

    async def scan(
        self, touched_since_ms: int | None, *, limit: int | None = None
    ) -> dict[str, dict[str, int]] | None:
        since = None if touched_since_ms is None else datetime.fromtimestamp(
            touched_since_ms / 1000, UTC
        )  # fmt: skip
        with backend_errors(f"{INBOUND} copy read failed"):
            if limit is not None and await self.coll.estimated_document_count() > limit:
                return None
            flt = {} if since is None else {"at": {"$gte": since}}
            docs = await self.coll.find(flt, projection={"d": 1}).to_list(None)
        return {str(d["_id"]): dict(d.get("d") or {}) for d in docs}


class InboundCopy(LocalCopy[dict[str, int]]):
    """A process's copy of the inbound counters (:class:`InboundCounter.counts` from memory)."""

    def __init__(self, db: Any, *, every_s: float, max_items: int, **kw: Any) -> None:
        super().__init__(_InboundRows(db), every_s=every_s, max_items=max_items, **kw)

    def counts(
        self,
        ids: Iterable[str],
        days: int = 7,
        now: datetime | None = None,
        *,
        stale_ok: bool = False,
    ) -> dict[str, int] | None:
        """Like :meth:`InboundCounter.counts` while the copy is fresh, else ``None``;
        ``stale_ok``: from the copy as its last read left it (the store refusing)."""
        rows = self.last_rows() if stale_ok else self.rows()
        if rows is None:
            return None
        keys = window_keys(days, now)
        got = {i: window_total({"d": rows.get(i)}, keys) for i in map(str, ids) if i in rows}
        return {i: n for i, n in got.items() if n > 0}
