"""The served-list log: what the ranker saw for every answer, for learning and off-policy eval.

One MongoDB document per served list (collection ``served_lists``, ``_id`` = request id)::

    {_id, at, user_id, surface, requested_surface, version, degraded, k,
     features: [feature names], X: float32 bytes (rows x features, row-major),
     ids: [logged candidate ids, one per row], incl: [inclusion probability per row],
     candidates: scored candidates in all, shown: [row of position 0, 1, ...],
     propensity: [per-slot probability of what was shown], explored: bool,
     policy: {...} (how the shown order was drawn), pool: [rows], pool_w: [weights],
     experiments: [{experiment, arm, design, unit, ...}] (only when in an experiment)}

**Bounded.** A list logs at most ``max_rows`` rows: every shown row and every exploration pool
row, then a uniform sample of the other scored candidates (``incl`` = the inclusion
probability of each row, 1.0 when everything fitted). The queue holds at most ``max_queue``
lists; when it is full a list is dropped and counted (``dropped``), never waited for.

**A store outage loses nothing the queue holds.** A write that fails (the store down, cut
off or paused past its timeouts) puts its lists back at the head of the queue and the
flusher tries again after a backoff (up to ``MAX_BACKOFF_S``); a list whose answer was
lost and that is written again is a duplicate request id (the first copy stays). Only
what overflows the queue meanwhile, and what :meth:`ServedLog.drain` cannot write when the
store fails at shutdown, is dropped, and counted in ``dropped`` (the API's
``opendisco_api_served_log_dropped``).

**Batched, off the hot path.** :meth:`ServedLog.log` appends a reference to what the request
already computed (no copy, no encoding) and returns; a background flusher encodes and
``insert_many``\\ s up to :data:`~opendisco._store.MAX_WRITES_PER_COMMAND` documents per
command. Append-only: documents are never updated.

**Retention.** ``days``: a TTL index on ``at`` where the server has them; on FerretDB (no TTL
indexes, see :class:`~opendisco._store.StoreCapabilities`) the flusher deletes expired lists at
most every ``purge_every_s`` (the events processor's fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from bson import Binary
from pymongo.errors import BulkWriteError, InvalidOperation

from opendisco._backend import backend_errors
from opendisco._store import MAX_WRITES_PER_COMMAND, create_collection, detect_capabilities

__all__ = ["SERVED_LISTS", "ServedList", "ServedLog", "decode_list", "sample_rows"]

SERVED_LISTS = "served_lists"
#: the longest wait between two attempts of a write the store refused
MAX_BACKOFF_S = 5.0
log = logging.getLogger("opendisco.signals")


@dataclass(frozen=True)
class ServedList:
    """One served answer as the ranker saw it (references, encoded later by the flusher).

    ``X`` rows align with ``ids`` (every scored candidate); ``shown`` are the rows in the
    order shown; ``propensity[p]`` the probability that the policy put ``shown[p]`` at slot
    ``p`` given the slots before it (1.0 for a deterministic answer); ``pool``/``pool_w`` the
    rows and weights an explored answer was sampled from (Plackett–Luce, see ``rerank``).
    """

    request_id: str
    at: datetime
    user_id: str | None
    surface: str
    requested_surface: str
    version: str
    degraded: bool
    k: int
    feature_names: Sequence[str]
    X: np.ndarray | None
    ids: Sequence[str]
    shown: Sequence[int]
    propensity: Sequence[float] = ()
    explored: bool = False
    policy: Mapping[str, Any] = field(default_factory=dict)
    pool: Sequence[int] = ()
    pool_w: Sequence[float] = ()
    #: the experiments the answer took part in (experiment, arm, design, unit, candidates' arms)
    experiments: Sequence[Mapping[str, Any]] = ()


def sample_rows(
    n: int, keep: Sequence[int], max_rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rows to log and their inclusion probabilities (pure but for ``rng``): every ``keep``
    row (probability 1), then a uniform sample of the others filling ``max_rows``."""
    must = np.unique(np.asarray([r for r in keep if 0 <= r < n], dtype=np.int64))
    if n <= max_rows:
        return np.arange(n, dtype=np.int64), np.ones(n)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), must, assume_unique=True)
    room = max(0, max_rows - len(must))
    picked = np.sort(rng.choice(rest, size=min(room, len(rest)), replace=False))
    rows = np.concatenate([must, picked])
    incl = np.concatenate([np.ones(len(must)), np.full(len(picked), len(picked) / len(rest))])
    order = np.argsort(rows, kind="stable")
    return rows[order], incl[order]


def _encode(s: ServedList, max_rows: int, rng: np.random.Generator) -> dict[str, Any]:
    n = len(s.ids)
    rows, incl = sample_rows(n, [*s.shown, *s.pool], max_rows, rng)
    pos = {int(r): i for i, r in enumerate(rows.tolist())}  # candidate row -> logged row
    doc: dict[str, Any] = {
        "_id": s.request_id,
        "at": s.at,
        "user_id": s.user_id,
        "surface": s.surface,
        "requested_surface": s.requested_surface,
        "version": s.version,
        "degraded": s.degraded,
        "k": s.k,
        "features": list(s.feature_names),
        "ids": [s.ids[r] for r in rows.tolist()],
        "incl": [round(float(p), 6) for p in incl],
        "candidates": n,
        "shown": [pos[int(r)] for r in s.shown],
        "propensity": [float(p) for p in s.propensity],
        "explored": s.explored,
        "policy": dict(s.policy),
    }
    if s.X is not None and len(rows):
        doc["X"] = Binary(np.ascontiguousarray(s.X[rows], dtype="<f4").tobytes())
    if s.experiments:
        doc["experiments"] = [dict(e) for e in s.experiments]
    if s.pool:
        doc["pool"] = [pos[int(r)] for r in s.pool]
        doc["pool_w"] = [float(w) for w in s.pool_w]
    return doc


def decode_list(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document with ``X`` as a float64 matrix (rows x features; empty if absent).
    Bytes that are not whole rows of its features (a document cut short or written by other
    code) decode to no rows: training and off-policy evaluation skip that list (``no_rows``)
    instead of failing on it."""
    out = dict(doc)
    names = list(doc.get("features") or [])
    raw = doc.get("X")
    if raw is not None and names:
        data = bytes(raw)
        whole = len(data) - len(data) % (4 * len(names))
        X = np.frombuffer(data[:whole], dtype="<f4").astype(np.float64).reshape(-1, len(names))
        out["X"] = X if whole == len(data) else X[:0]
    else:
        out["X"] = np.zeros((len(doc.get("ids") or []), len(names)))
    return out


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
        self.written = 0
        self.dropped = 0
        self.failed = 0  # write attempts (in lists) the store refused; retried, not lost
        self.duplicates = 0
        self._failures = 0  # consecutive failed writes (the flusher's backoff)

    # -- the hot path ---------------------------------------------------------------------
    def log(self, served: ServedList) -> None:
        """Queue one list; never blocks (a full queue drops it and counts it)."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(served)
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
        docs = [_encode(s, self.max_rows, self._rng) for s in batch]
        try:
            await self.ensure()
            with backend_errors("served_lists write failed"):
                try:
                    await self.coll.insert_many(docs, ordered=False)
                    self.written += len(docs)
                except BulkWriteError as exc:  # a repeated request id: the first list stays
                    errors = exc.details.get("writeErrors", [])
                    if any(e.get("code") != 11000 for e in errors):
                        raise
                    self.written += len(docs) - len(errors)
                    self.duplicates += len(errors)
        except Exception as exc:  # the store is down or slow: keep the lists for a retry
            self.failed += len(docs)
            if isinstance(exc, InvalidOperation) or isinstance(exc.__cause__, InvalidOperation):
                # the client was closed under the log (its owner gone without a drain):
                # no retry can write these; dropped and counted, and the flusher ends
                self._queue.extendleft(reversed(batch))
                self._drop_queue("the client was closed")
                return 0
            self._failures += 1
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
        return len(batch)

    def _delay(self) -> float:
        if not self._failures:
            return self.flush_every_s
        return min(MAX_BACKOFF_S, max(self.flush_every_s, 0.1) * 2**self._failures)

    async def _run(self, wake: asyncio.Event) -> None:
        """The flusher: started by :meth:`log`, ends when the queue is empty; writes every
        ``flush_every_s`` (backing off while the store fails), or at once when ``wake`` is
        set (:meth:`drain`: then a failed write ends it, drain counts what is left)."""
        while self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._delay())
            while await self.flush():
                pass
            if self._failures and wake.is_set():
                return
            if not self._native_ttl and time.monotonic() - self._last_purge > self.purge_every_s:
                self._last_purge = time.monotonic()
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
        logged: one failed write ends the drain, which must not outlast a shutdown."""
        task, self._task = self._task, None
        ran = task is not None and not task.done()
        if ran:
            if self._wake is not None:
                self._wake.set()
            await task
        if not (ran and self._failures):  # the flusher's last attempt failed: no second one
            while await self.flush():
                pass
        self._drop_queue("the store failed")

    def _drop_queue(self, why: str) -> None:
        """Drop what is queued, counted in ``dropped`` and logged (no write can take it)."""
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
        """Decoded lists (:func:`decode_list`) served in ``[since, until)``, oldest first.

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
            out += [decode_list(d) for d in page]
            last = page[-1]["_id"]
            if len(page) < batch:
                break
        out.sort(key=lambda d: (d["at"], d["_id"]))
        return out
