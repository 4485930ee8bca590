"""The exposure counters as a process's own copy (:class:`~opendisco.signals._copies.LocalCopy`)
for the reranker's exposure features: impressions in the window, paced exposure and live
trend of every candidate, read from a dict instead of one engine search per request (that
search queued behind the candidate k-NN searches: p50 17–28 ms at concurrency 4 on 2 cores).
Rows are read from doc values in pages of 1,000 (a page's parsing holds the event loop
~2–3 ms, not ~15), by ``touched_at``, which every counter script sets to the engine's clock
when it applies the write (``_counting.TOUCHED``: a write applied seconds after its writer
began is still read, not only by the full read every five minutes).

The copy also tells the served pipeline which candidates this process knows reached their
exposure cap (:meth:`ExposureMirror.known`, the one definition in ``signals._caps``): the
engine's ``_capped`` list changes only when served impressions are flushed, so between two
flushes (and while a flush fails) it alone let one process show an item many times past its
cap. Each refresh opens a window of this process's served impressions just before it reads
(``ServedExposure.open_window``, as the degraded fallback's snapshot does), so the copy's count
plus that window misses none of this process's impressions. A stale copy is still used (its
counts as last read, plus everything this process served since: other processes' impressions
since are not seen — that is what stale means); without one (before the first read, over
``max_items``, ``signal_copies_s`` 0) this process's own unread impressions alone are known.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from opendisco._backend import backend_errors, whole_search

from ._caps import KnownImpressions, window_count
from ._copies import LocalCopy
from ._exposure import READ_FIELDS, Exposure, ExposureStore
from ._served import ServedExposure
from ._trending import epoch_ms

__all__ = ["MIRROR", "ExposureMirror", "scan_counters"]

#: one counter document's fields, in ``READ_FIELDS`` order after ``item_id`` (raw doc values)
_FIELDS = tuple(f for f in READ_FIELDS if f != "item_id")
_COUNT, _START = _FIELDS.index("count"), _FIELDS.index("window_start")
_Row = tuple[Any, ...]
#: the copy's windows of served impressions (``ServedExposure.open_window``)
MIRROR = "mirror"


async def scan_counters(
    store: ExposureStore,
    touched_since_ms: int | None = None,
    *,
    page: int = 1000,
    limit: int | None = None,
) -> dict[str, _Row] | None:
    """Every counter document's fields by item id (doc values as of the last refresh), only
    those written at or after ``touched_since_ms`` when given; paged by ``search_after`` on
    the item id. ``None`` when there are more than ``limit``."""
    if touched_since_ms is None:
        query: dict[str, Any] = {"exists": {"field": "item_id"}}
    else:
        query = {"range": {"touched_at": {"gte": touched_since_ms}}}
    out: dict[str, _Row] = {}
    after: list[Any] | None = None
    # the index unknown (ensured before use: a node behind on the cluster state) is a failed
    # read: read as no counters, a full read emptied the copy the caps are held by
    with backend_errors("exposure counters scan failed"):
        if limit is not None:
            got = await store.client.count(index=store.index, body={"query": query})
            # a failed shard's counters are not counters the index lacks: a short count
            # would let the scan hold more than ``limit``
            if int(whole_search(got, "exposure counters count")["count"]) > limit:
                return None
        while True:
            body: dict[str, Any] = {
                "size": page,
                "query": query,
                "sort": [{"item_id": "asc"}],
                "stored_fields": "_none_",
                "docvalue_fields": READ_FIELDS,
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            resp = await store.client.search(index=store.index, body=body)
            hits = whole_search(resp, "exposure counters scan")["hits"]["hits"]
            for hit in hits:
                fields = {k: v[0] for k, v in (hit.get("fields") or {}).items() if v}
                if (item := fields.get("item_id")) is not None:
                    out[str(item)] = tuple(fields.get(f) for f in _FIELDS)
            if len(hits) < page:
                return out
            after = hits[-1]["sort"]


class _CounterRows:
    """The exposure counters as a :class:`~opendisco.signals._copies.CopySource`."""

    what = "exposure counters"

    def __init__(self, store: ExposureStore) -> None:
        self.store = store

    async def scan(
        self, touched_since_ms: int | None, *, limit: int | None = None
    ) -> dict[str, _Row] | None:
        return await scan_counters(self.store, touched_since_ms, limit=limit)


class _Unserved:
    """No served impressions (a copy without :class:`ServedExposure`)."""

    def served_since(self, item_id: str, generation: int) -> int:
        return 0


class ExposureMirror(LocalCopy[_Row]):
    """Reads like :meth:`ExposureStore.read` (not realtime), from a copy kept by :meth:`run`;
    :meth:`known`: the impressions this process knows of (with ``served``, its own)."""

    def __init__(
        self,
        store: ExposureStore,
        *,
        every_s: float,
        max_items: int,
        served: ServedExposure | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(_CounterRows(store), every_s=every_s, max_items=max_items, **kw)
        self.store = store
        self.served = served
        #: the window of ``served`` opened just before the read the copy holds (0: none)
        self.window = 0

    async def refresh(self, now: datetime | None = None) -> None:
        """One read (:meth:`LocalCopy.refresh`), a window of the served impressions opened just
        before it: what this read cannot hold (:meth:`known`)."""
        if self.served is None:
            return await super().refresh(now)
        window = self.served.open_window(MIRROR)
        try:
            await super().refresh(now)
        except BaseException:
            self.served.close_window(window)  # the copy still holds the read before
            raise
        self.window = window

    def known(self, now: datetime | None = None) -> KnownImpressions:
        """The impressions this process knows each item has had in its window at ``now``
        (``signals._caps``): the copy's count as its last read left it — fresh or stale, a
        lower bound still — plus what this process served since that read, held unwritten
        then, or wrote too recently for it; with no copy, the latter alone."""
        rows = self.last_rows()
        served = self.served if self.served is not None else _Unserved()
        default = self.store.settings.exposure_default_cap
        now_ms, window_ms = epoch_ms(now or datetime.now(UTC)), self.store.window_ms
        capped = frozenset(self.store.known_capped(now_ms))
        if rows is None:
            return KnownImpressions(lambda _: 0, served, 0, default, capped)

        def counted(item_id: str) -> int:
            row = rows.get(item_id)
            return 0 if row is None else window_count(row[_COUNT], row[_START], now_ms, window_ms)

        return KnownImpressions(counted, served, self.window, default, capped)

    async def read(
        self, ids: Iterable[str], now: datetime | None = None, *, realtime: bool = False
    ) -> dict[str, Exposure]:
        """Every id's counters at ``now`` from the copy while it is fresh, else the engine's."""
        rows = None if realtime else self.rows()
        if rows is None:
            return await self.store.read(ids, now, realtime=realtime)
        now_ms = epoch_ms(now or datetime.now(UTC))
        out: dict[str, Exposure] = {}
        for i in map(str, ids):
            row = rows.get(i)
            fields = {} if row is None else dict(zip(_FIELDS, row, strict=True))
            out[i] = self.store.exposure_of(fields, now_ms) if fields else Exposure()
        return out
