"""The served-list log: what the ranker saw for every answer, for learning and off-policy eval.

One MongoDB document per served list (collection ``served_lists``, ``_id`` = request id)::

    {_id, at, user_id, surface, requested_surface, version, degraded, k,
     features: [feature names], X: float32 bytes (rows x features, row-major),
     ids: [logged candidate ids, one per row], incl: [inclusion probability per row],
     candidates: scored candidates in all, shown: [row of position 0, 1, ...],
     propensity: [per-slot probability of what was shown], explored: bool,
     policy: {...} (how the shown order was drawn), pool: [rows], pool_w: [weights],
     experiments: [{experiment, arm, design, unit, ...}] (only when in an experiment),
     filled: [rows the degraded fallback's candidates filled a short page with] (only then)}

**Bounded.** A list logs at most ``max_rows`` rows: every shown row and every exploration pool
row, then a uniform sample of the other scored candidates (``incl`` = the inclusion
probability of each row, 1.0 when everything fitted). The queue holds at most ``max_queue``
lists; when it is full a list is dropped and counted (``dropped``), never waited for (with a
spool: spooled).

**A store outage loses nothing the queue holds.** A write that fails (the store down, cut
off or paused past its timeouts) puts its lists back at the head of the queue and the
flusher tries again after a backoff (up to ``MAX_BACKOFF_S``); a list whose answer was
lost and that is written again is a duplicate request id (the first copy stays). Only
what overflows the queue meanwhile, and what :meth:`ServedLog.drain` cannot write when the
store fails at shutdown, is dropped, and counted in ``dropped`` (the API's
``opendisco_api_served_log_dropped``).

**With a spool** (:class:`~opendisco.signals.ServedSpool`, the API's processes: setting
``served_log_spool_mb``) **neither does a kill -9.** The failed batch and everything queued
behind it go to a local file instead, then every list logged while writes fail (encoded as it
is logged); the flusher writes the files back once the store answers, and a process started
later in the same state directory writes back what a killed one left. A kill -9 then loses
only what was in memory: the lists of the last ``flush_every_s`` and a batch in flight, or,
when the store went silent, those logged before its first write gave up (``WRITE_TIMEOUT_S``,
3 s, not the driver's socket timeout: a write that long unanswered has failed; the lists of
one that was applied all the same are written again and kept once).
The drain at shutdown spools what the store did not take instead of dropping it, also when
its caller's deadline cuts it short (a paused store: the batch in flight goes too, written
once either way by request id).

**What no retry changes is dropped and counted**, never retried with the lists behind it: a
list the store refuses (over the BSON limit, a document-level write error) or that cannot be
encoded (a string with no UTF-8, an int over 64 bits, a caller's bad rows). Non-finite floats
are stored as None (FerretDB closes the connection on a NaN, as if the store were down).

**Batched, off the hot path.** :meth:`ServedLog.log` appends a reference to what the request
already computed (no copy, no encoding) and returns; a background flusher encodes and
``insert_many``\\ s up to :data:`~opendisco._store.MAX_WRITES_PER_COMMAND` documents per
command. Append-only: documents are never updated.

**Retention.** ``days``: a TTL index on ``at`` where the server has them; on FerretDB (no TTL
indexes, see :class:`~opendisco._store.StoreCapabilities`) the flusher starts a delete of the
expired lists at most every ``purge_every_s`` (the events processor's fallback), beside it:
never waited on (a delete has no write timeout), cancelled by :meth:`ServedLog.drain`.

Why this module is long: the writer's failure handling (the queue, the spool, the store's
refusals, a drain cut short) is one state machine, read and reviewed in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from bson.errors import InvalidDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, InvalidOperation, WriteError

from opendisco._backend import backend_errors
from opendisco._cancel import raise_lost_cancel
from opendisco._store import MAX_WRITES_PER_COMMAND, create_collection, detect_capabilities

from ._served_list import ServedList, decode_list, encode_list
from ._served_spool import ServedSpool

__all__ = ["SERVED_LISTS", "ServedLog"]

SERVED_LISTS = "served_lists"
DUPLICATE_KEY = 11000
#: a document's own refusals, which no retry changes (a list written again: DUPLICATE_KEY;
#: BadValue, InvalidBSON, DocumentValidationFailure, BSONObjectTooLarge): dropped and counted,
#: where a retry of its batch failed on it for ever and the lists behind it with it
_NOT_RETRIED = frozenset({DUPLICATE_KEY, 2, 22, 121, 10334})
#: the longest wait between two attempts of a write the store refused
MAX_BACKOFF_S = 5.0
#: the longest wait for one write (``insert_many`` of up to 50 lists: tens of ms answered)
WRITE_TIMEOUT_S = 3.0
#: what the driver cannot encode (over the BSON limit, a string with no UTF-8, an int over 64
#: bits): no retry changes it
_UNENCODABLE = (InvalidDocument, UnicodeEncodeError, OverflowError)
log = logging.getLogger("opendisco.signals")


class ServedLog:
    """Append-only, batched, bounded writer of :class:`ServedList` documents (module doc)."""

    def __init__(
        self,
        db: Any,
        *,
        max_rows: int = 200,
        max_queue: int = 10_000,
        days: float = 30.0,
        purge_every_s: float = 300.0,
        flush_every_s: float = 0.2,
        seed: int | None = None,
        spool: ServedSpool | None = None,
        adopt_every_s: float = 60.0,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.db = db
        self.coll = db[SERVED_LISTS]
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.days = days
        self.purge_every_s = purge_every_s
        self.flush_every_s = flush_every_s
        self._queue: deque[ServedList] = deque()
        self._rng = np.random.default_rng(seed)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None  # the running flusher's: set, it writes now
        self._ready = False
        self._native_ttl = True
        self._last_purge = 0.0
        self._purging: asyncio.Task[None] | None = None  # the purge running beside the flusher
        self.written = 0
        self.dropped = 0
        self.failed = 0  # write attempts (in lists) the store refused; retried, not lost
        self.duplicates = 0
        self.unreadable = 0  # documents :meth:`read` skipped: not served lists
        self._failures = 0  # consecutive failed writes (the flusher's backoff)
        self._failed = False  # the last write attempt failed
        #: where lists go while the store fails (``signals._served_spool``), if anywhere
        self.spool = spool
        self.adopt_every_s = adopt_every_s
        #: a write not answered by then failed (its lists spooled, or queued again)
        self.write_timeout_s = write_timeout_s
        self._last_adopt = time.monotonic()

    # -- the hot path ---------------------------------------------------------------------
    def log(self, served: ServedList) -> None:
        """Queue one list; never blocks (a full queue drops it and counts it). With a spool,
        a list the full queue cannot take, and every list while the store fails, goes to the
        spool instead (encoded now)."""
        if self._failures and self._spooled():
            # write-back probes the store. Nothing spooled (the spool refused it: its disk
            # gone or full): queued, its write the probe (else refused for good)
            self._spill([], [served])
        elif len(self._queue) >= self.max_queue:
            if self.spool is None:
                self.dropped += 1
                return
            # no write failed yet (one hangs: the store silent): spooled, written back later
            self._spill([], [served])
        else:
            self._queue.append(served)
        self._start()

    def attach_spool(self, spool: ServedSpool) -> None:
        """Spool lists the store does not take (the API's processes; see the module doc);
        what the spool adopted from stopped processes is written back from now on."""
        self.spool = spool
        if spool.pending:
            self._start()

    def close_spool(self) -> None:
        """Stop spooling (shutdown, after :meth:`drain`): what is not written back stays on
        disk for the next process."""
        spool, self.spool = self.spool, None
        if spool is not None:
            spool.close()

    @property
    def spooled(self) -> int:
        """Lists appended to the spool (in total)."""
        return self.spool.spooled if self.spool is not None else 0

    def _start(self) -> None:
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: flushed by drain()
                loop = asyncio.get_running_loop()
                self._wake = asyncio.Event()
                self._task = loop.create_task(self._run(self._wake))

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- background ---------------------------------------------------------------------
    async def ensure(self) -> None:
        """The collection and its ``at`` index (TTL where the server has TTL indexes)."""
        if self._ready:
            return
        self._native_ttl = (await detect_capabilities(self.db)).ttl_indexes
        with backend_errors("served_lists setup failed"):
            if SERVED_LISTS not in await self.db.list_collection_names():
                await create_collection(self.db, SERVED_LISTS)
            if self._native_ttl:
                await self.coll.create_index(
                    "at", expireAfterSeconds=int(self.days * 86400), name="ttl_at"
                )
            else:  # FerretDB: purge_expired stands in
                await self.coll.create_index("at", name="at")
        self._ready = True

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete lists older than the retention (what the TTL index does); returns count."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.days)
        with backend_errors("purging expired served lists failed"):
            res = await self.coll.delete_many({"at": {"$lt": cutoff}})
        return int(res.deleted_count)

    async def flush(self) -> int:
        """Write up to one command's worth of queued lists; returns how many were written
        (0 when the queue is empty or the write failed: the lists are queued again)."""
        batch: list[ServedList] = []
        while self._queue and len(batch) < MAX_WRITES_PER_COMMAND:
            batch.append(self._queue.popleft())
        if not batch:
            return 0
        docs = self._encoded(batch)
        if not docs:  # none could be encoded (dropped, counted): nothing to write
            return len(batch)
        try:
            await self._insert(docs)
        except asyncio.CancelledError:  # drain() cut short (a paused store at shutdown):
            self._queue.extendleft(reversed(batch))  # it spools them (in or not: once)
            raise
        except Exception as exc:  # the store is down or slow: keep the lists for a retry
            self.failed += len(docs)
            self._failed = True
            if isinstance(exc, InvalidOperation) or isinstance(exc.__cause__, InvalidOperation):
                # the client was closed under the log (its owner gone without a drain):
                # no retry can write these; spooled or dropped, and the flusher ends
                self._queue.extendleft(reversed(batch))
                self._drop_queue("the client was closed")
                return 0
            self._failures += 1
            if self.spool is not None:  # on disk: neither the queue's bound nor a kill loses it
                self._spill(docs, [])
                self._spill([], list(self._queue))
                self._queue.clear()
                log.warning("served-list log write failed (%d lists spooled): %r", len(docs), exc)
                return 0
            self._queue.extendleft(reversed(batch))
            over = len(self._queue) - self.max_queue
            for _ in range(max(0, over)):  # lists logged meanwhile filled the queue
                self._queue.pop()
            self.dropped += max(0, over)
            log.warning(
                "served-list log write failed (%d lists queued again, %d queued): %r",
                len(docs),
                len(self._queue),
                exc,
            )
            return 0
        self._failures = 0
        self._failed = False
        return len(batch)

    async def _insert(self, docs: list[dict[str, Any]]) -> None:
        """Insert encoded lists; a repeated request id is a duplicate (the first copy stays)."""
        await self.ensure()
        with backend_errors("served_lists write failed"):
            try:
                # a store gone silent answers nothing until the socket timeout (10 s in the
                # API): the lists logged meanwhile waited in memory, lost on a kill -9
                await asyncio.wait_for(
                    self.coll.insert_many(docs, ordered=False), self.write_timeout_s
                )
                self.written += len(docs)
            except BulkWriteError as exc:  # the others of an unordered insert are written
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") not in _NOT_RETRIED for e in errors):
                    raise
                refused = [e for e in errors if e.get("code") != DUPLICATE_KEY]
                self.written += len(docs) - len(errors)
                self.duplicates += len(errors) - len(refused)
                self.dropped += len(refused)
                for e in refused:
                    log.error("served-list log: a list refused by the store: %s", e.get("errmsg"))
            except _UNENCODABLE:  # one cannot be stored (over 16 MB, no UTF-8): one by one
                for doc in docs:
                    await self._insert_one(doc)

    async def _insert_one(self, doc: dict[str, Any]) -> None:
        """Insert one list; one no store can take (its BSON over the limit) is dropped and
        counted — before, it failed its batch for ever and every list queued behind it."""
        try:
            await asyncio.wait_for(self.coll.insert_one(doc), self.write_timeout_s)  # as a batch
            self.written += 1
        except DuplicateKeyError:
            self.duplicates += 1
        except (*_UNENCODABLE, WriteError) as exc:
            if isinstance(exc, WriteError) and exc.code not in _NOT_RETRIED:
                raise
            self.dropped += 1
            log.error("served-list log: list %r cannot be stored (%s)", doc.get("_id"), exc)

    def _spill(self, docs: list[dict[str, Any]], lists: list[ServedList]) -> None:
        """``docs`` and ``lists`` (encoded here) to the spool; what it refuses is dropped
        (counted by the spool and in ``dropped``)."""
        assert self.spool is not None
        everything = [*docs, *self._encoded(lists)]
        if everything:
            self.dropped += len(everything) - self.spool.spill(everything)

    def _encoded(self, lists: list[ServedList]) -> list[dict[str, Any]]:
        """The documents of ``lists``; a caller's bad list (a shown row it does not have) is
        dropped and counted: never raised on the hot path (log()), nor ending the flusher."""
        docs: list[dict[str, Any]] = []
        for s in lists:
            try:
                docs.append(encode_list(s, self.max_rows, self._rng))
            except Exception as exc:
                self.dropped += 1
                log.error("served-list log: list %r cannot be encoded (%r)", s.request_id, exc)
        return docs

    async def _write_back(self) -> bool:
        """Write the spooled files back, oldest first, each deleted once all of it is in the
        store; False when a write failed (the rest stays spooled)."""
        assert self.spool is not None
        for f in self.spool.seal():
            docs = list(self.spool.read(f))
            try:
                for at in range(0, len(docs), MAX_WRITES_PER_COMMAND):
                    await self._insert(docs[at : at + MAX_WRITES_PER_COMMAND])
            except Exception as exc:
                self._failures += 1
                self._failed = True
                log.warning("served-list spool: write-back failed (%s): %r", f.path.name, exc)
                return False
            self.spool.written(f)
            self._failures = 0
            self._failed = False
        return True

    def _spooled(self) -> bool:
        return self.spool is not None and self.spool.pending

    def _delay(self) -> float:
        if not self._failures:
            return self.flush_every_s
        return min(MAX_BACKOFF_S, max(self.flush_every_s, 0.1) * 2**self._failures)

    async def _run(self, wake: asyncio.Event) -> None:
        """The flusher: started by :meth:`log`, ends when the queue is empty; writes every
        ``flush_every_s`` (backing off while the store fails), or at once when ``wake`` is
        set (:meth:`drain`: then a failed write ends it, drain counts what is left)."""
        while self._queue or self._spooled():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._delay())
            self._failed = False
            while await self.flush():
                raise_lost_cancel()  # one the write swallowed: drain() is cut short
            if self._failures and wake.is_set():
                return
            if self._spooled() and not self._queue and not self._failed:
                await self._write_back()  # while the store fails: the probe of its return
            if wake.is_set():  # drain() writes what is left itself
                return
            if self.spool is not None and time.monotonic() - self._last_adopt > self.adopt_every_s:
                self._last_adopt = time.monotonic()
                self.spool.adopt()  # a process killed beside this one
            if not self._native_ttl and time.monotonic() - self._last_purge > self.purge_every_s:
                self._purge_beside()

    def _purge_beside(self) -> None:
        """Start a purge beside the flusher, unless one still runs: a delete has no write
        timeout, and a store gone silent under it held the flusher until the socket timeout
        (10 s in the API) with the lists logged meanwhile in memory, lost on a kill -9."""
        if self._purging is not None and not self._purging.done():
            return
        self._last_purge = time.monotonic()
        self._purging = asyncio.get_running_loop().create_task(self._purge())

    async def _purge(self) -> None:
        try:
            await self.purge_expired()
        except Exception as exc:
            log.warning("served-list purge failed: %r", exc)

    async def drain(self) -> None:
        """Write everything queued now and stop the flusher (shutdown, end of an evaluation:
        before the client closes).

        The flusher is woken and awaited, not cancelled: a batch it has taken off the queue
        is in flight until its insert returns, and cancelling it there would lose the batch
        without counting it. The flusher ends by itself once the queue is empty or a write
        failed (its writes never raise), so this waits for the writes only, not for a
        ``flush_every_s``. What the store did not take (it is down) is dropped, counted and
        logged: one failed write ends the drain, which must not outlast a shutdown.

        With a spool, what is queued is spooled instead, also when the caller gives up on the
        drain (cancels it: the store paused, a write hanging until its socket timeout): the
        batch in flight and the lists queued behind it are spooled, not lost."""
        task, self._task = self._task, None
        ran = task is not None and not task.done()
        if self._purging is not None:  # housekeeping, retried by the next process
            self._purging.cancel()
        why = "the drain was cancelled"
        try:
            if ran:
                if self._wake is not None:
                    self._wake.set()
                await task
            if not (ran and self._failures):  # the flusher's last attempt failed: no second
                while await self.flush():
                    raise_lost_cancel()
                if self._spooled() and not self._failures:
                    await self._write_back()
            why = "the store failed"
        finally:
            self._drop_queue(why)

    def _drop_queue(self, why: str) -> None:
        """Drop what is queued, counted in ``dropped`` and logged (no write can take it) —
        with a spool, spool it instead: the next process here writes it."""
        if self._queue and self.spool is not None:
            left = len(self._queue)
            self._spill([], list(self._queue))
            self._queue.clear()
            log.warning("served-list log: %d lists spooled (%s)", left, why)
        if self._queue:
            left = len(self._queue)
            self._queue.clear()
            self.dropped += left
            log.warning("served-list log: %d lists not written (%s)", left, why)

    # -- reading (training, off-policy evaluation) ----------------------------------------
    async def read(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        explored: bool | None = None,
        batch: int = 500,
    ) -> list[dict[str, Any]]:
        """Decoded lists (:func:`decode_list`) served in ``[since, until)``, oldest first;
        a document that is not a served list (:func:`malformed`) is skipped and counted in
        :attr:`unreadable`.

        Paged by ``_id`` in keyset order (FerretDB scans once per page and a cursor is never
        left open between pages)."""
        query: dict[str, Any] = {}
        if since is not None or until is not None:
            query["at"] = {
                **({"$gte": since} if since is not None else {}),
                **({"$lt": until} if until is not None else {}),
            }
        if explored is not None:
            query["explored"] = explored
        last: str | None = None
        out: list[dict[str, Any]] = []
        while True:
            page_q = {**query, **({"_id": {"$gt": last}} if last is not None else {})}
            with backend_errors("reading served lists failed"):
                page = await self.coll.find(page_q).sort("_id", 1).limit(batch).to_list(batch)
            if not page:
                break
            for d in page:
                try:
                    out.append(decode_list(d))
                except ValueError as exc:  # written by other code: skipped, said
                    self.unreadable += 1
                    log.warning("served-list log: %s: skipped", exc)
            last = page[-1]["_id"]
            if len(page) < batch:
                break
        out.sort(key=lambda d: (d["at"], d["_id"]))
        return out
