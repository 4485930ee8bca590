"""Per-key rate limits across API processes: demand-weighted shares, synced through MongoDB.

Each process (a uvicorn worker, or an API replica on another host) keeps its own token
buckets — no store round trip per request — and grants ``share x rate`` of each key, where
``share = mine / (mine + others)``: its own recent demand for the key over everyone's. Every
``interval_s`` a process writes one document with its demand per key (``api_rate_usage``,
``_id`` = its process id: a single writer per document, so FerretDB's non-atomic updates are
no hazard) and reads the others' fresh ones. So the shares of one key add up to about 1: a key
used through one process gets the whole rate there; a key spread over processes is split by
where its requests land; a process that has not seen a key yet counts one request's worth of
demand so it can always admit the first one.

How far it can overshoot: for one sync interval after a key's traffic moves to another
process (demand is measured, then shared), plus one request per process per interval. It
never applies less than its share once synced.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from opendisco._backend import backend_errors
from opendisco._cancel import raise_lost_cancel

__all__ = ["RATE_USAGE", "RateShares"]

RATE_USAGE = "api_rate_usage"

log = logging.getLogger("opendisco.api")


class RateShares:
    def __init__(
        self,
        db: Any,
        interval_s: float = 0.5,
        *,
        process_id: str | None = None,
        clock: Callable[[], float] = time.time,
        elapsed: Callable[[], float] = time.monotonic,
        smoothing: float = 0.5,
    ) -> None:
        """``clock``: the wall clock the documents' ``at`` are stamped and compared with (the
        other processes', maybe on other hosts); ``elapsed``: the monotonic clock demand is
        measured over (the wall clock stepped back an hour made one interval -3600 s, floored
        to 1 ms: 1000x the demand published, the other processes' shares near 0)."""
        self.coll = db[RATE_USAGE]
        self.interval_s = interval_s
        self.process_id = process_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self._elapsed = elapsed
        self.smoothing = smoothing
        self._count: Counter[str] = Counter()  # requests per key since the last sync
        self._mine: dict[str, float] = {}  # demand per key (requests/s, moving average)
        self._others: dict[str, float] = {}  # the other processes' summed demand per key
        self._last = elapsed()

    def note(self, key_id: str) -> None:
        self._count[key_id] += 1

    def share(self, key_id: str) -> float:
        """The part of ``key_id``'s rate this process may grant now (0..1]."""
        others = self._others.get(key_id, 0.0)
        if others <= 0:
            return 1.0
        mine = self._mine.get(key_id, 0.0) + 1.0 / self.interval_s  # one request's worth
        return mine / (mine + others)

    def _fold(self, now: float) -> dict[str, float]:
        elapsed = max(1e-3, now - self._last)
        self._last = now
        keys = set(self._mine) | set(self._count)
        out = {}
        for k in keys:
            rate = self._count.get(k, 0) / elapsed
            prev = self._mine.get(k)
            value = rate if prev is None else prev + self.smoothing * (rate - prev)
            if value > 1e-3:
                out[k] = value
        self._count.clear()
        self._mine = out
        return out

    async def sync(self) -> None:
        """Publish this process's demand and read the others' (two store round trips)."""
        now = self._clock()
        mine = self._fold(self._elapsed())
        demand = [{"k": k, "r": v} for k, v in mine.items()]  # FerretDB: no nested arrays
        doc = {"_id": self.process_id, "at": now, "demand": demand}
        with backend_errors("rate usage sync failed"):
            await self.coll.replace_one({"_id": self.process_id}, doc, upsert=True)
            docs = await self.coll.find({}, {"at": 1, "demand": 1}).to_list(None)
        others: Counter[str] = Counter()
        gone = []
        for d in docs:
            at = d.get("at", 0)
            if at < now - 60:
                gone.append(d["_id"])  # left by a process that died without leaving
            if d["_id"] == self.process_id or at < now - 3 * self.interval_s:
                continue  # ourselves, or a process gone quiet (or dead)
            for entry in d.get("demand") or []:
                others[str(entry["k"])] += float(entry["r"])
        self._others = dict(others)
        if gone:
            with backend_errors("rate usage cleanup failed"):
                await self.coll.delete_many({"_id": {"$in": gone}})

    async def run(self) -> None:
        """Sync forever (a background task); a failed sync keeps the last shares."""
        while True:
            try:
                await self.sync()
            except Exception as exc:
                log.warning("rate limit shares not synced: %r", exc)
            raise_lost_cancel()
            await asyncio.sleep(self.interval_s)

    async def leave(self) -> None:
        """Withdraw this process's demand (on shutdown), so the others take its share now."""
        with backend_errors("rate usage cleanup failed"):
            await self.coll.delete_one({"_id": self.process_id})
