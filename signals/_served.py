"""Served impressions counted toward exposure, off the request path.

Only client-posted ``impression`` events used to reach the exposure counters, so pacing and
caps saw what clients chose to report. :class:`ServedExposure` counts what is actually shown:
the API's answer calls :meth:`ServedExposure.add` (through ``Discovery.record_served``; a dict
update, no I/O), and the counts are written with :meth:`ExposureStore.record` by a background
flush at most every ``exposure_flush_s`` — one ``_bulk`` for all requests of that period, never a
round trip of a request; :meth:`ServedExposure.flush_forever` (a background task of each API
process) starts the flush of what waits when no answer comes to start it. Counts not yet
flushed when a process is killed are kept in its local journal when it has one
(:meth:`ServedExposure.attach`, ``signals._served_journal``: the API's processes), and the next
process started on that host adopts them; without a journal they are lost (at most one
period's). A shutdown drains them, and what the engine does not take within the shutdown's
deadline stays in the journal (a flush cut in flight keeps its part, as a failed one does).

Each part a flush writes carries a mark of its own, kept on every counter it updates
(``_counting.once_per_mark``): a counter that keeps the mark ignores the write. A part whose
write failed is sent again by the next flush, first, with the same counts and the same mark
(``retry``), so a write applied whose answer was lost (a connection cut after the engine
applied it; the transport's own re-sends of it too) is counted once — as long as its mark is
among the counter's last ``MARKS_KEPT`` writers' when it comes again. A ``_bulk`` applied in
part (:class:`~opendisco.PartialWrite`) keeps only the items it did not write. The parts after
a failed one were not sent: their counts go back to ``pending`` (bounded by ``max_pending``
ids). A flush stops at its first failure and the part kept is sent first by the next, so at
most one part waits to be sent again (more only after adopting a dead process's journal: its
parts, each with its own mark, wait together).

Client impression events naming a served list (``request_id``) are not counted again
(``EventProcessor``; setting ``exposure_count_served``).

What a read of the counters cannot hold yet — served since it began, unwritten then, or
written too shortly before it for its doc values to show (``visible_s``) — is kept per reader
in windows (:meth:`ServedExposure.open_window`, :meth:`ServedExposure.served_since`): the
degraded fallback's snapshot and the process's copy of the counters (``ExposureMirror``) each
add it to what they read (``signals._caps.KnownImpressions``).

A flush writes its batch in parts of ``chunk`` items (``exposure_flush_chunk``), spread over
half of its period, with one update of the capped list (the last part's): one ``_bulk`` of a
period's ~400 scripted upserts held one engine write thread — one of the two cores here —
for ~55 ms at once, and a candidate ``_msearch`` landing in it waited (served p99 at c=1
84.9 ms with served counting vs 77.0 without, bench/README.md api).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping

from opendisco._cancel import raise_lost_cancel, retrieve
from opendisco._exceptions import BackendError, PartialWrite

from ._exposure import ExposureStore
from ._served_journal import Adopted, ServedJournal

__all__ = ["ServedExposure"]

log = logging.getLogger("opendisco.signals")


class ServedExposure:
    """Accumulates served item ids and flushes them to the exposure counters in batches."""

    #: the parts of a flush are spread over this share of its period (at most 1 s in all)
    pace_share = 0.5
    #: how long a written count may stay out of a read of the counters' doc values (the index
    #: refreshes every second, ``_counters_index.REFRESH``; the copies' overlap is 3 s too)
    visible_s = 3.0

    def __init__(
        self,
        store: ExposureStore,
        flush_s: float,
        max_pending: int = 100_000,
        chunk: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.flush_s = flush_s
        self.max_pending = max_pending
        #: items per ``_bulk`` of a flush (0: the whole batch in one)
        self.chunk = chunk
        self.pending: Counter[str] = Counter()
        self.flushing: Counter[str] = Counter()  # the counts a flush is writing now
        #: ``(mark, counts)`` of the parts whose write failed (or that a dead process's journal
        #: left), sent first by the next flush with their marks
        self.retry: list[tuple[str, dict[str, int]]] = []
        #: the local journal of what is unwritten (None: a kill -9 loses it)
        self.journal: ServedJournal | None = None
        self.written = 0
        self.dropped = 0
        self._last = time.monotonic()
        self._task: asyncio.Future[list[str]] | None = None
        #: the generations of the last two windows :meth:`open_window` opened per reader
        #: (newest last), and each kept window's counts: served since it opened, or unread then
        self._readers: dict[str, list[int]] = {}
        self._windows: dict[int, Counter[str]] = {}
        self._generation = 0
        self._clock = clock
        #: ``(written at, counts)`` of the parts written in the last ``visible_s``
        self._recent: deque[tuple[float, Mapping[str, int]]] = deque()

    def attach(self, journal: ServedJournal, adopted: Adopted) -> None:
        """Journal from now on (before anything is served), and take over what dead processes'
        journals left: their parts, sent first, each with its mark."""
        self.journal = journal
        self.retry.extend(adopted.parts)

    def adopt(self) -> None:
        """Take over the journals of processes gone since (a worker killed beside this one)."""
        if self.journal is None:
            return
        try:
            adopted = self.journal.adopt()
        except OSError as exc:
            log.warning("served journal: orphans not adopted now: %r", exc)
            return
        self.retry.extend(adopted.parts)

    def detach(self) -> None:
        """Stop journaling (shutdown): the journal is removed when nothing is left unwritten,
        else kept for the next process to adopt."""
        journal, self.journal = self.journal, None
        if journal is not None:
            with contextlib.suppress(OSError):
                journal.close(remove=self.unwritten_total() == 0)

    def add(self, ids: Iterable[str]) -> None:
        """Count one impression of each id (journaled, no network I/O); starts a background
        flush when due."""
        ids = list(ids)
        if ids:
            self._journal(lambda j: j.served(ids))
        for i in ids:
            if i in self.pending or len(self.pending) < self.max_pending:
                self.pending[i] += 1
            else:
                self.dropped += 1
            for window in self._windows.values():
                if i in window or len(window) < self.max_pending:
                    window[i] += 1
        self._start_due()

    def _start_due(self) -> None:
        """Start a background flush when one is due (a period since the last) and none runs."""
        if time.monotonic() - self._last >= self.flush_s and (
            self._task is None or self._task.done()
        ):
            self._last = time.monotonic()
            self._task = asyncio.ensure_future(self.flush())
            self._task.add_done_callback(retrieve)  # logged in flush

    async def flush_forever(self) -> None:
        """Flush what waits (pending, or the part a failed flush kept) at least every period,
        also when no answer is served: a process that went quiet kept its last period's
        counts, and a part a storm left, unwritten until its next answer — other processes'
        caps and pacing saw stale counts, and a kill -9 lost them."""
        while True:
            await asyncio.sleep(self.flush_s)
            self.adopt()
            if self.pending or self.retry:
                self._start_due()

    async def flush(self, pace: bool = True) -> list[str]:
        """Write the parts kept by a failed flush (or adopted), then what is pending (in parts
        of ``chunk`` items, spread out unless ``pace`` is False); returns the capped ids."""
        batch, self.pending = self.pending, Counter()
        retry, self.retry = self.retry, []
        ids = sorted(batch)
        size = self.chunk or len(ids) or 1
        cut = [{i: batch[i] for i in ids[k : k + size]} for k in range(0, len(ids), size)]
        parts = [*retry, *((_mark(), counts) for counts in cut)]
        if not parts:
            return []
        self._journal(lambda j: j.rotate(parts))  # all unwritten now, each part with its mark
        self.flushing = Counter(batch)
        for _, counts in retry:
            self.flushing.update(counts)
        gap = min(self.flush_s, 1.0) * self.pace_share / len(parts) if pace else 0.0
        capped: list[str] = []
        try:
            for j, (mark, counts) in enumerate(parts):
                try:
                    if j:  # a cancel here (or one the last write swallowed): this part and
                        raise_lost_cancel()  # the later ones are kept
                        if gap > 0:
                            await asyncio.sleep(gap)
                    capped = await self.store.record(
                        counts, cap_list=j == len(parts) - 1, mark=mark
                    )
                except (BackendError, asyncio.CancelledError) as exc:
                    # a bulk applied in part (PartialWrite) wrote every count it does not name;
                    # what it names, or all of a part that failed unanswered (or was cancelled
                    # in flight: a shutdown's deadline), goes again with its mark (a counter
                    # that got it ignores it); later parts were not sent
                    unwritten = exc.unwritten if isinstance(exc, PartialWrite) else counts
                    again = {i: counts[i] for i in unwritten if i in counts}
                    self.written += sum(counts.values()) - sum(again.values())
                    self._wrote({i: n for i, n in counts.items() if i not in again})
                    # later parts sent before (kept or adopted) keep their marks, before the
                    # parts adopted while this flush ran; new ones go back to pending
                    kept = [(mark, again)] if again else []
                    self.retry = [*kept, *parts[j + 1 : len(retry)], *self.retry]
                    later = Counter[str]()
                    for _, rest in parts[max(j + 1, len(retry)) :]:
                        later.update(rest)
                    log.warning(
                        "served impressions not counted yet (%d ids): %r",
                        sum(len(c) for _, c in self.retry) + len(later),
                        exc,
                    )
                    self._requeue(later)
                    raise
                self.written += sum(counts.values())
                self._wrote(counts)
                self.flushing -= Counter(counts)
                self._journal(lambda j, mark=mark: j.written(mark))
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
        """Impressions of ``item_id`` served and not known written to the counters (pending,
        in a flush still running, or in the part kept to be sent again)."""
        return sum(c.get(item_id, 0) for c in self._unwritten_parts())

    def _wrote(self, counts: Mapping[str, int]) -> None:
        """Keep the counts of a part just written for ``visible_s`` (:meth:`_unread_parts`)."""
        self._forget_read()
        if counts:
            self._recent.append((self._clock(), counts))

    def _forget_read(self) -> None:
        """Drop the parts written over ``visible_s`` ago: any read now shows them."""
        horizon = self._clock() - self.visible_s
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()

    def open_window(self, reader: str) -> int:
        """Start counting, for ``reader``, what is served from now on, beside what a read of
        the counters made now cannot hold (unwritten, or written in the last ``visible_s``:
        a read of doc values may not show it yet); returns the window's generation
        (:meth:`served_since`). Opened just before ``reader`` reads the counters, it holds
        every impression that read may miss — written after it, not yet, or too recently (one
        the read does show is in both: counted twice for a few seconds, never missed). The
        last two windows of each reader are kept: the counts it read before stay in use until
        the new ones are."""
        self._generation += 1
        kept = self._readers.get(reader, [])
        for old in kept[:-1]:
            self._windows.pop(old, None)
        self._readers[reader] = [*kept[-1:], self._generation]
        start = sum((Counter(c) for c in self._unread_parts()), Counter[str]())
        self._windows[self._generation] = start
        return self._generation

    def close_window(self, generation: int) -> None:
        """Stop keeping the window of ``generation`` (the read it was opened for failed): the
        windows opened before it stay kept for the reads that did succeed."""
        self._windows.pop(generation, None)
        for reader, kept in self._readers.items():
            self._readers[reader] = [g for g in kept if g != generation]

    def served_since(self, item_id: str, generation: int) -> int:
        """Impressions of ``item_id`` in the window of ``generation`` (served since it opened,
        or unread then): what a read of the counters made then cannot hold. Of a window no
        longer kept (or never opened), what a read made now could not hold."""
        window = self._windows.get(generation)
        if window is not None:
            return window.get(item_id, 0)
        return sum(c.get(item_id, 0) for c in self._unread_parts())

    def unwritten_total(self) -> int:
        """Impressions served and not known written to the counters, of every item."""
        return sum(sum(c.values()) for c in self._unwritten_parts())

    def _unread_parts(self) -> tuple[Mapping[str, int], ...]:
        """What a read of the counters made now may not hold: what is unwritten, and the
        parts written in the last ``visible_s``."""
        self._forget_read()
        return (*self._unwritten_parts(), *(c for _, c in self._recent))

    def _unwritten_parts(self) -> tuple[Mapping[str, int], ...]:
        """What is served and not known written: pending, in a flush still running, and the
        part a failed flush kept to be sent again."""
        return (self.pending, self.flushing, *(c for _, c in self.retry))

    async def drain(self) -> None:
        """Wait for a running flush and write what is left (shutdown, tests, benchmarks)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
        await self.flush(pace=False)

    def _journal(self, write: Callable[[ServedJournal], None]) -> None:
        """Write to the journal; one that fails (a full disk) is dropped, the answer goes on
        without it, as a process without a journal does. It is deleted: this process holds
        everything in it and writes it; left, its lock released, a process started here would
        have adopted it and counted it again."""
        if self.journal is None:
            return
        try:
            write(self.journal)
        except OSError as exc:
            log.error("served journal failed, serving without it: %r", exc)
            with contextlib.suppress(OSError):
                self.journal.close(remove=True)
            self.journal = None


def _mark() -> str:
    """A part's mark: 48 random bits (the events' marks end in ``.e`` / ``.t``)."""
    return f"{secrets.token_hex(6)}.s"
