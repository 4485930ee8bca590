"""Each process's own copy of the exposure counters, for the reranker's exposure features.

The features read three numbers per candidate (impressions in the window, paced exposure,
live trend) for every candidate of a request (~500). Read from the engine, that is one search
per request on the engine's search thread pool, queued behind the candidate k-NN searches:
p50 17–25 ms at concurrency 4 on 2 shared cores (``bench/api_stages.py``), on the critical
path after the candidates. The copy makes it a dict lookup:

* :meth:`ExposureMirror.refresh` reads the counter documents written (``touched_at``: the
  writer's clock) since its previous read began, minus ``overlap_ms`` (the index refreshes
  every second and a write lands some time after its clock reading), from doc values, in
  pages of 1,000 (each page's parsing holds this process's event loop ~2–3 ms, not 15);
* every ``full_every_s`` it reads them all instead and replaces the copy: documents written
  without ``touched_at`` (by older code), a write in flight longer than the overlap, clocks
  further apart than it, deleted counters;
* with more than ``max_items`` counter documents it keeps no copy (memory) and reads go to
  the engine per request, as without one;
* :meth:`ExposureMirror.read` answers from the copy only while it is fresh — its last
  successful read began at most ``stale_s`` ago — and otherwise (before the first read,
  while the engine refuses) from the engine.

What a stale copy can change: the exposure features, by the impressions of at most
``stale_s``. Never eligibility: capped items are excluded by the candidate queries
themselves (the engine's realtime ``_capped`` list), not from these counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from opensearchpy.exceptions import NotFoundError

from opendisco._backend import backend_errors
from opendisco._settings import Settings

from ._exposure import READ_FIELDS, Exposure, ExposureStore
from ._trending import epoch_ms

__all__ = ["ExposureMirror", "scan_counters"]

log = logging.getLogger("opendisco.signals")

#: one counter document's fields, in ``READ_FIELDS`` order after ``item_id`` (raw doc values)
_FIELDS = tuple(f for f in READ_FIELDS if f != "item_id")
_Row = tuple[Any, ...]


async def scan_counters(
    store: ExposureStore,
    touched_since_ms: int | None = None,
    *,
    page: int = 1000,
    limit: int | None = None,
) -> dict[str, _Row] | None:
    """Every counter document's fields by item id (doc values as of the last refresh), only
    those written at or after ``touched_since_ms`` when given; paged by ``search_after`` on
    the item id. ``None`` when there are more than ``limit``; an index not created yet has
    none."""
    if touched_since_ms is None:
        query: dict[str, Any] = {"exists": {"field": "item_id"}}
    else:
        query = {"range": {"touched_at": {"gte": touched_since_ms}}}
    out: dict[str, _Row] = {}
    after: list[Any] | None = None
    with backend_errors("exposure counters scan failed"):
        try:
            if limit is not None:
                got = await store.client.count(index=store.index, body={"query": query})
                if int(got["count"]) > limit:
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
                hits = (await store.client.search(index=store.index, body=body))["hits"]["hits"]
                for hit in hits:
                    fields = {k: v[0] for k, v in (hit.get("fields") or {}).items() if v}
                    if (item := fields.get("item_id")) is not None:
                        out[str(item)] = tuple(fields.get(f) for f in _FIELDS)
                if len(hits) < page:
                    return out
                after = hits[-1]["sort"]
        except NotFoundError:
            return out


class ExposureMirror:
    """Reads like :meth:`ExposureStore.read` (not realtime), from a copy kept by :meth:`run`."""

    def __init__(
        self,
        store: ExposureStore,
        *,
        every_s: float,
        max_items: int,
        overlap_ms: int = 3_000,
        full_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.every_s = every_s
        self.max_items = max_items
        self.overlap_ms = overlap_ms
        self.full_every_s = full_every_s
        #: the copy answers only if its last successful read began at most this long ago
        self.stale_s = max(5 * every_s, 5.0)
        self._clock = clock
        self._rows: dict[str, _Row] | None = None
        self._since_ms = 0  # the writers' clock when the last successful read began
        self._fresh_at = float("-inf")  # this process's clock, same moment
        self._full_at = float("-inf")  # when the last full read (or size check) began

    @classmethod
    def from_settings(cls, store: ExposureStore, settings: Settings) -> ExposureMirror:
        return cls(
            store, every_s=settings.exposure_mirror_s, max_items=settings.exposure_mirror_max_items
        )

    @property
    def items(self) -> int | None:
        """Counter documents in the copy (``None``: no copy)."""
        return None if self._rows is None else len(self._rows)

    def fresh(self) -> bool:
        return self._rows is not None and self._clock() - self._fresh_at <= self.stale_s

    async def read(
        self, ids: Iterable[str], now: datetime | None = None, *, realtime: bool = False
    ) -> dict[str, Exposure]:
        """Every id's counters at ``now`` from the copy while it is fresh, else the engine's."""
        rows = self._rows
        if realtime or rows is None or not self.fresh():
            return await self.store.read(ids, now, realtime=realtime)
        now_ms = epoch_ms(now or datetime.now(UTC))
        out: dict[str, Exposure] = {}
        for i in map(str, ids):
            row = rows.get(i)
            fields = {} if row is None else dict(zip(_FIELDS, row, strict=True))
            out[i] = self.store.exposure_of(fields, now_ms) if fields else Exposure()
        return out

    async def refresh(self, now: datetime | None = None) -> None:
        """One read: what changed since the last one, or everything when a full read is due."""
        began, began_ms = self._clock(), epoch_ms(now or datetime.now(UTC))
        if began - self._full_at >= self.full_every_s:
            self._rows = await scan_counters(self.store, limit=self.max_items)
            self._full_at = began
            if self._rows is None:
                log.info("exposure counters over %d documents: no copy kept", self.max_items)
        elif self._rows is not None:
            changed = await scan_counters(self.store, self._since_ms - self.overlap_ms)
            self._rows.update(changed or {})
        self._since_ms, self._fresh_at = began_ms, began

    async def run(self) -> None:
        """Refresh every ``every_s`` forever (a background task); a failed read leaves the
        copy to go stale, when reads fall back to the engine."""
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    log.info("exposure counters copy refreshed again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive any failure
                # once per outage at warning level, not once per second
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "exposure counters copy not refreshed: %r", exc)  # fmt: skip
                failing = True
            await asyncio.sleep(self.every_s)
