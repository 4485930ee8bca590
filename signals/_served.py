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

A flush writes its batch in parts of ``chunk`` items (``exposure_flush_chunk``), spread over
half of its period, with one update of the capped list (the last part's): one ``_bulk`` of a
period's ~400 scripted upserts held one engine write thread — one of the two cores here —
for ~55 ms at once, and a candidate ``_msearch`` landing in it waited (served p99 at c=1
84.9 ms with served counting vs 77.0 without, bench/README.md api). A part that fails keeps
its unwritten counts and every later part's for the next flush; the earlier parts are written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping

from opendisco._exceptions import BackendError, PartialWrite

from ._exposure import ExposureStore

__all__ = ["ServedExposure"]

log = logging.getLogger("opendisco.signals")


class ServedExposure:
    """Accumulates served item ids and flushes them to the exposure counters in batches."""

    #: the parts of a flush are spread over this share of its period (at most 1 s in all)
    pace_share = 0.5

    def __init__(
        self, store: ExposureStore, flush_s: float, max_pending: int = 100_000, chunk: int = 0
    ) -> None:
        self.store = store
        self.flush_s = flush_s
        self.max_pending = max_pending
        #: items per ``_bulk`` of a flush (0: the whole batch in one)
        self.chunk = chunk
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

    async def flush(self, pace: bool = True) -> list[str]:
        """Write what is pending (in parts of ``chunk`` items, spread out unless ``pace`` is
        False); returns the capped ids."""
        batch, self.pending = self.pending, Counter()
        if not batch:
            return []
        self.flushing = batch
        ids = sorted(batch)
        size = self.chunk or len(ids)
        parts = [ids[k : k + size] for k in range(0, len(ids), size)]
        gap = min(self.flush_s, 1.0) * self.pace_share / len(parts) if pace else 0.0
        capped: list[str] = []
        try:
            for j, part in enumerate(parts):
                if j and gap > 0:
                    await asyncio.sleep(gap)
                counts = {i: batch[i] for i in part}
                try:
                    capped = await self.store.record(counts, cap_list=j == len(parts) - 1)
                except BackendError as exc:
                    # a bulk applied in part (PartialWrite) wrote every count it does not name:
                    # counting those again would add them twice; later parts were not sent
                    unwritten = exc.unwritten if isinstance(exc, PartialWrite) else part
                    kept = {i: counts[i] for i in unwritten if i in counts}
                    self.written += sum(counts.values()) - sum(kept.values())
                    kept.update((i, batch[i]) for later in parts[j + 1 :] for i in later)
                    log.warning("served impressions not counted yet (%d ids): %s", len(kept), exc)
                    self._requeue(kept)
                    raise
                self.written += sum(counts.values())
                for i in part:
                    del self.flushing[i]
        finally:
            self.flushing = Counter()
        return capped

    def _requeue(self, kept: Mapping[str, int]) -> None:
        """Put counts a flush did not write back in ``pending`` (bounded by ``max_pending``)."""
        lost = 0
        for i, n in kept.items():
            if i in self.pending or len(self.pending) < self.max_pending:
                self.pending[i] += n
            else:
                lost += n
        if lost:
            log.warning("%d served impressions dropped: %d ids pending", lost, self.max_pending)
            self.dropped += lost

    def unwritten(self, item_id: str) -> int:
        """Impressions of ``item_id`` served and not written to the counters yet (pending, or
        in a flush still running)."""
        return self.pending.get(item_id, 0) + self.flushing.get(item_id, 0)

    async def drain(self) -> None:
        """Wait for a running flush and write what is left (shutdown, tests, benchmarks)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
        await self.flush(pace=False)


def _retrieve(fut: asyncio.Future[list[str]]) -> None:
    if not fut.cancelled():
        fut.exception()  # logged in flush; retrieved so asyncio does not report it as lost
