"""Served impressions counted toward exposure, off the request path.

Only client-posted ``impression`` events used to reach the exposure counters, so pacing and
caps saw what clients chose to report. :class:`ServedExposure` counts what is actually shown:
the API's answer calls :meth:`ServedExposure.add` (through ``Discovery.record_served``; a dict
update, no I/O), and the counts are written with :meth:`ExposureStore.record` by a background
flush at most every ``exposure_flush_s`` — one ``_bulk`` for all requests of that period, never a
round trip of a request. A flush that fails keeps its counts for the next one (bounded by
``max_pending`` ids); one whose ``_bulk`` was applied in part keeps only the counts it did not
write (:class:`~opendisco.PartialWrite`: the others are written, and would be added twice);
counts not yet flushed when a process stops are lost (at most one
period's). Client impression events naming a served list (``request_id``) are then not
counted again (``EventProcessor``; setting ``exposure_count_served``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable

from opendisco._exceptions import BackendError, PartialWrite

from ._exposure import ExposureStore

__all__ = ["ServedExposure"]

log = logging.getLogger("opendisco.signals")


class ServedExposure:
    """Accumulates served item ids and flushes them to the exposure counters in batches."""

    def __init__(self, store: ExposureStore, flush_s: float, max_pending: int = 100_000) -> None:
        self.store = store
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.pending: Counter[str] = Counter()
        self.flushing: Counter[str] = Counter()  # the batch a flush is writing now
        self.written = 0
        self.dropped = 0
        self._last = time.monotonic()
        self._task: asyncio.Future[list[str]] | None = None

    def add(self, ids: Iterable[str]) -> None:
        """Count one impression of each id (no I/O); starts a background flush when due."""
        for i in ids:
            if i in self.pending or len(self.pending) < self.max_pending:
                self.pending[i] += 1
            else:
                self.dropped += 1
        if time.monotonic() - self._last >= self.flush_s and (
            self._task is None or self._task.done()
        ):
            self._last = time.monotonic()
            self._task = asyncio.ensure_future(self.flush())
            self._task.add_done_callback(_retrieve)

    async def flush(self) -> list[str]:
        """Write what is pending (one ``ExposureStore.record``); returns the capped ids."""
        batch, self.pending = self.pending, Counter()
        if not batch:
            return []
        self.flushing = batch
        try:
            capped = await self.store.record(batch)
        except BackendError as exc:
            # a bulk applied in part (PartialWrite) wrote every count it does not name:
            # counting those again would add them twice
            unwritten = exc.unwritten if isinstance(exc, PartialWrite) else batch.keys()
            kept = {i: batch[i] for i in unwritten if i in batch}
            self.written += sum(batch.values()) - sum(kept.values())
            log.warning("served impressions not counted yet (%d ids): %s", len(kept), exc)
            lost = 0
            for i, n in kept.items():
                if i in self.pending or len(self.pending) < self.max_pending:
                    self.pending[i] += n
                else:
                    lost += n
            if lost:
                log.warning("%d served impressions dropped: %d ids pending", lost, self.max_pending)
                self.dropped += lost
            raise
        finally:
            self.flushing = Counter()
        self.written += sum(batch.values())
        return capped

    def unwritten(self, item_id: str) -> int:
        """Impressions of ``item_id`` served and not written to the counters yet (pending, or
        in a flush still running)."""
        return self.pending.get(item_id, 0) + self.flushing.get(item_id, 0)

    async def drain(self) -> None:
        """Wait for a running flush and write what is left (shutdown, tests, benchmarks)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
        await self.flush()


def _retrieve(fut: asyncio.Future[list[str]]) -> None:
    if not fut.cancelled():
        fut.exception()  # logged in flush; retrieved so asyncio does not report it as lost
