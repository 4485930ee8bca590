"""Sync scale-out: the feed split into partitions, each applied by one worker under a lease.

A document belongs to partition ``crc32(_id) % sync_partitions`` (:func:`partition_of`; the
id's BSON type is part of the hash input, so ``424242`` and ``"424242"`` may differ). Every
``opendisco sync`` worker reads the feed and applies only the partitions it holds; each
partition has its own checkpoint, so a partition moves between workers without losing or
repeating more than one batch.

Leases live in ``sync_leases`` and are built only from operations that are atomic on FerretDB
too (its updates are not: they are read-modify-writes). A lease is a *term* document
``{_id: "<scope>:p<k>of<P>:t<term>", owner, expires}``:

* taking partition k inserts term ``t + 1`` when term ``t`` has expired (or none exists):
  the unique ``_id`` makes exactly one contender win, however many try at once;
* only the owner writes its term document (renewal pushes ``expires``; release sets it to
  the past), so there is never a write-write race on one document;
* the highest term is the holder. A worker applies a partition only while its own renewal
  is younger than ``sync_lease_seconds`` minus a safety margin (checked before every bulk),
  a renewal that ends later than that gives the partitions up (it may land after a
  contender read the term expired), and a contender takes over only after ``expires`` has
  passed, so two workers never apply one partition at once (clocks of the machines agreeing
  to within the margin).

Workers register in ``sync_workers`` (``{_id: worker, scope, expires}``, each written only by
its own worker) and hold about ``ceil(P / live workers)`` partitions each: a worker above its
share releases partitions at the end of a pass, one below it takes free or expired ones. A
worker killed with ``-9`` stops renewing; its partitions are taken over within
``sync_lease_seconds`` plus one pass of the survivors.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco._store import bulk_write_chunked

__all__ = ["LEASES", "WORKERS", "PartitionLeases", "partition_of", "scope"]

LEASES = "sync_leases"
WORKERS = "sync_workers"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
log = logging.getLogger("opendisco.ingest.sync")


def scope(settings: Settings) -> str:
    """What one set of partitions feeds: an alias from an items collection."""
    return f"{settings.index_alias}:{settings.items_collection}"


def partition_of(doc_id: Any, partitions: int) -> int:
    """The partition of a document id (stable across processes and machines)."""
    if partitions <= 1:
        return 0
    data = doc_id.encode("utf-8", "surrogatepass") if isinstance(doc_id, str) else b""
    if not isinstance(doc_id, str):
        data = f"{type(doc_id).__name__}:{doc_id!r}".encode()
    return zlib.crc32(data) % partitions


@dataclass
class _Term:
    partition: int
    term: int
    owner: str
    expires: datetime


class PartitionLeases:
    """The partitions one worker holds, taken and renewed through term leases."""

    def __init__(self, settings: Settings, db: Any, worker: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.scope = scope(settings)
        self.count = settings.sync_partitions
        self.lease = timedelta(seconds=settings.sync_lease_seconds)
        self.margin = min(settings.sync_lease_seconds / 3, 5.0)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.held: dict[int, int] = {}  # partition -> our term
        self._valid_until = 0.0  # monotonic deadline of our last successful renewal

    def _id(self, partition: int, term: int) -> str:
        return f"{self.scope}:p{partition}of{self.count}:t{term}"

    @property
    def valid(self) -> bool:
        """Whether this worker may still apply what it holds (renewed recently enough)."""
        return time.monotonic() < self._valid_until

    def owns(self, doc_id: Any) -> bool:
        return partition_of(doc_id, self.count) in self.held

    async def _terms(self) -> tuple[dict[int, _Term], list[str]]:
        """The current (highest) term of every partition of this layout, and the ids of
        superseded terms older than the previous one (safe to delete: nobody writes them)."""
        with backend_errors("reading sync leases failed"):
            docs = await self.db[LEASES].find({"scope": self.scope, "of": self.count}).to_list(None)
        out: dict[int, _Term] = {}
        for d in docs:
            t = _Term(d["partition"], d["term"], d["owner"], d["expires"].replace(tzinfo=UTC))
            if t.partition not in out or t.term > out[t.partition].term:
                out[t.partition] = t
        stale = [d["_id"] for d in docs if d["term"] < out[d["partition"]].term - 1]
        return out, stale

    async def _live_workers(self, now: datetime) -> int:
        with backend_errors("sync worker registry failed"):
            await self.db[WORKERS].update_one(
                {"_id": self.worker},
                {"$set": {"scope": self.scope, "expires": now + self.lease}},
                upsert=True,
            )
            docs = await self.db[WORKERS].find({"scope": self.scope}).to_list(None)
            dead = [d["_id"] for d in docs if d["expires"].replace(tzinfo=UTC) < now]
            if dead:  # a dead worker never writes again: its registration can go
                await self.db[WORKERS].delete_many({"_id": {"$in": dead}})
        return max(1, len(docs) - len(dead))

    async def renew(self) -> None:
        """Push the expiry of every held term; drop partitions a higher term has taken, and
        give them all up when the renewal ended after this worker's validity: a contender may
        have read a term expired meanwhile and be inserting the next one, which a read of the
        terms here can precede (a late renewal kept the old term beside the new holder's)."""
        started = time.monotonic()
        now = datetime.now(UTC)
        if self.held:
            ops = [
                UpdateOne(
                    {"_id": self._id(p, t), "owner": self.worker},
                    {"$set": {"expires": now + self.lease}},
                )
                for p, t in sorted(self.held.items())
            ]
            await bulk_write_chunked(self.db[LEASES], ops)
            if time.monotonic() > self._valid_until:
                log.warning("worker %s: lease renewal came too late", self.worker)
                await self.release()  # expired now: a newer term, if any, stays the highest
        terms, _ = await self._terms()
        for p, t in list(self.held.items()):
            cur = terms.get(p)
            if cur is None or cur.term != t or cur.owner != self.worker:
                log.warning("worker %s lost partition %d (term %d)", self.worker, p, t)
                del self.held[p]
        self._valid_until = started + self.lease.total_seconds() - self.margin

    async def rebalance(self, *, take_all: bool = False) -> dict[int, int]:
        """Renew, then move towards this worker's fair share (``take_all``: every partition
        not validly held by another worker). Returns the partitions now held."""
        await self.renew()
        now = datetime.now(UTC)
        share = self.count if take_all else math.ceil(self.count / await self._live_workers(now))
        if len(self.held) > share:
            await self.release(sorted(self.held)[share:])
        terms, stale = await self._terms()
        for p in range(self.count):
            if len(self.held) >= share:
                break
            cur = terms.get(p)
            if p in self.held or (cur is not None and cur.expires >= now):
                continue
            term = cur.term + 1 if cur is not None else 1
            if await self._take(p, term, now):
                self.held[p] = term
                log.info("worker %s took partition %d (term %d)", self.worker, p, term)
        if stale:
            with backend_errors("sync lease cleanup failed"):
                await self.db[LEASES].delete_many({"_id": {"$in": stale}})
        return dict(self.held)

    async def _take(self, partition: int, term: int, now: datetime) -> bool:
        doc = {
            "_id": self._id(partition, term),
            "scope": self.scope,
            "of": self.count,
            "partition": partition,
            "term": term,
            "owner": self.worker,
            "expires": now + self.lease,
            "taken_at": now,
        }
        with backend_errors("taking a sync lease failed"):
            try:
                await self.db[LEASES].insert_one(doc)
            except (DuplicateKeyError, BulkWriteError):
                return False  # another worker took this term first
        return True

    async def release(self, partitions: list[int] | None = None) -> None:
        """Give partitions up now (their next holder need not wait for the expiry)."""
        partitions = sorted(self.held) if partitions is None else partitions
        ops = [
            UpdateOne(
                {"_id": self._id(p, self.held[p]), "owner": self.worker},
                {"$set": {"expires": EPOCH}},
            )
            for p in partitions
            if p in self.held
        ]
        for p in partitions:
            if self.held.pop(p, None) is not None:
                log.info("worker %s released partition %d", self.worker, p)
        if ops:
            await bulk_write_chunked(self.db[LEASES], ops)

    async def leave(self) -> None:
        """Release everything and unregister (graceful stop)."""
        await self.release()
        with backend_errors("sync worker registry failed"):
            await self.db[WORKERS].delete_one({"_id": self.worker})
