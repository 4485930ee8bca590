"""MongoDB-protocol helpers every layer shares: capabilities, chunked writes, leases, time.

The store is MongoDB in production and FerretDB 1.24 (SQLite backend) locally. What differs
is captured once, in :class:`StoreCapabilities` (the model: one capabilities object chosen
by detection, not error-code checks scattered through the code):

* FerretDB has no change streams, no TTL indexes and no multi-document transactions;
* FerretDB 1.x keeps every update statement's SQLite connection until the whole ``update``
  command ends: a bulk of ~100 updates exhausts its pool of 100 and the server stops
  answering. Every bulk of writes is cut to :data:`MAX_WRITES_PER_COMMAND`
  (:func:`bulk_write_chunked`);
* FerretDB applies updates as non-atomic read-modify-writes (concurrent ``$push`` loses
  entries), but a unique ``_id`` insert is atomic: read-modify-write sections hold a
  :func:`lease` (``insert_many({_id, owner, expires})``; an expired lease, left by a crashed
  holder, is taken over). Its deletes are read-then-delete-by-``_id`` too: a delete whose
  filter names the dead holder can remove the lease another contender inserted meanwhile,
  so only the contender whose arbiter insert wins deletes a dead holder's lease
  (:func:`free_leases`).

Why this module is long: the lease — taken, renewed, released in the background when a lock
write fails, a dead holder's freed by one contender — is built from FerretDB's one atomic
write, the unique insert, and its parts share that machinery; every layer's read-modify-writes
rest on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
)

from ._backend import backend_errors
from ._cancel import raise_lost_cancel
from ._exceptions import BackendError, StoreBackendError, StoreUnreachable
from ._holder import held_until_over, holder

__all__ = [
    "AHEAD_S",
    "MAX_WRITES_PER_COMMAND",
    "Lease",
    "StoreCapabilities",
    "TakeOver",
    "age_s",
    "bulk_write_chunked",
    "create_collection",
    "detect_capabilities",
    "finite_values",
    "free_leases",
    "lease",
    "leased_unless_atomic",
    "now_ms",
    "renewing",
]


def finite_values(value: Any) -> Any:
    """``value`` (a document: nested dicts, lists and tuples) with every NaN or infinity as
    None: FerretDB closes the connection on a NaN and refuses an infinity, and strict JSON
    has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_values(v) for v in value]
    return value


#: write operations per ``bulk_write``/``insert_many`` command (FerretDB hangs at ~100)
MAX_WRITES_PER_COMMAND = 50


#: the server's answer to creating a collection that exists (MongoDB and FerretDB alike)
_NAMESPACE_EXISTS = 48


async def create_collection(db: Any, name: str) -> None:
    """Create collection ``name`` unless it exists, also when another process creates it at
    the same moment (a listing taken before its create is stale: the server answers
    NamespaceExists, which the first events call of two fresh API processes met as a 503)."""
    try:
        await db.create_collection(name)
    except CollectionInvalid:
        pass
    except OperationFailure as exc:
        if exc.code != _NAMESPACE_EXISTS:
            raise


def now_ms() -> datetime:
    """UTC now at millisecond precision (what BSON stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


#: how far ahead of this host's clock a time another process stored may be and still date
#: it (the clocks of NTP-synced hosts differ by milliseconds)
AHEAD_S = 1.0


def age_s(at: datetime | None, now: datetime, ahead_s: float = AHEAD_S) -> float:
    """Pure: how old, in seconds at ``now``, a document stamped ``at`` (another process's
    clock, maybe this host's before its clock stepped back) is; infinite when undated or dated
    more than ``ahead_s`` ahead — its age is unknown, so it is never fresh (a stored cap list
    an hour ahead read as -1 h old, counted fresh for more than an hour). A check of a hard
    rule keeps :data:`AHEAD_S`; a soft one may tolerate more skew between its hosts."""
    if at is None:
        return math.inf
    age = (now - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds()
    return age if age >= -ahead_s else math.inf


@dataclass(frozen=True)
class StoreCapabilities:
    """What the MongoDB-protocol server behind a database can do."""

    ferretdb: bool
    replica_set: bool

    @property
    def change_streams(self) -> bool:
        return self.replica_set and not self.ferretdb

    @property
    def ttl_indexes(self) -> bool:
        return not self.ferretdb

    @property
    def transactions(self) -> bool:
        return self.replica_set and not self.ferretdb

    @property
    def atomic_updates(self) -> bool:
        """One update of one document is atomic (FerretDB 1.x rewrites the whole document:
        of 400 concurrent ``$inc`` of one document, 134 were left)."""
        return not self.ferretdb


_CAPS: dict[int, StoreCapabilities] = {}


async def detect_capabilities(db: Any) -> StoreCapabilities:
    """Ask the server once per client (``buildInfo`` + ``hello``)."""
    key = id(db.client)
    caps = _CAPS.get(key)
    if caps is None:
        with backend_errors("cannot reach MongoDB"):
            admin = db.client.admin
            info = await admin.command("buildInfo")
            hello = await admin.command("hello")
        caps = StoreCapabilities(
            ferretdb="ferretdbVersion" in info, replica_set=bool(hello.get("setName"))
        )
        _CAPS[key] = caps
    return caps


async def bulk_write_chunked(coll: Any, ops: Sequence[Any], *, ordered: bool = False) -> int:
    """``bulk_write`` in commands of at most :data:`MAX_WRITES_PER_COMMAND` operations;
    returns the documents modified or upserted. :class:`StoreUnreachable` only when nothing
    was sent: a later command's is a :class:`StoreBackendError` (the earlier ones written)."""
    done, k = 0, 0
    try:
        with backend_errors(f"{coll.name} bulk write failed"):
            for k in range(0, len(ops), MAX_WRITES_PER_COMMAND):
                chunk = list(ops[k : k + MAX_WRITES_PER_COMMAND])
                res = await coll.bulk_write(chunk, ordered=ordered)
                done += res.modified_count + res.upserted_count
    except StoreUnreachable as exc:
        if k == 0:
            raise
        raise StoreBackendError(f"{exc} (after {k} of {len(ops)} writes)") from exc.__cause__
    return done


#: what a taker of leases does before it frees them: ``{id: previous holder's token}``
TakeOver = Callable[[Mapping[str, str]], Awaitable[None]]


@dataclass
class Lease:
    """Leases held (what ``async with lease(...) as held`` gives): ``token``, the holder's, is
    the mark of the whole-document writes made under them (``signals._store_fence``), so a
    taker of the leases knows which writes to fence; ``kept``: left to expire at the end, not
    released (:meth:`keep`)."""

    token: str
    kept: bool = False

    def keep(self) -> None:
        """Leave the leases to expire instead of releasing them: a write made under them may
        still land and could not be fenced; whoever takes them over fences it first."""
        self.kept = True


#: lease releases retried in the background (:func:`_released_on_error`), kept here while
#: they run
_RELEASING: set[asyncio.Future[None]] = set()


async def _release(locks: Any, ids: Sequence[str], token: str, within_s: float) -> None:
    """Delete the leases ``token`` holds on ``ids``, tried again (backoff up to 2 s) while the
    store does not answer, for ``within_s`` at most: by then they have expired anyway."""
    pause, deadline = 0.25, time.monotonic() + within_s
    while True:
        try:
            await locks.delete_many({"_id": {"$in": list(ids)}, "owner": token})
            return
        except InvalidOperation:  # the client was closed: the process is stopping
            return
        except PyMongoError:  # (the driver's answer to a cancel, too)
            if time.monotonic() + pause > deadline:
                return
        raise_lost_cancel()
        await asyncio.sleep(pause)
        pause = min(2 * pause, 2.0)


@contextlib.contextmanager
def _released_on_error(
    locks: Any, ids: Sequence[str], token: str, within_s: float
) -> Iterator[None]:
    """A lease's write to ``locks`` (taking or giving its leases up) that fails may have
    landed all the same (its answer lost: the store cut, a timeout, the caller cancelled), or
    did not give them up: the leases ``token`` holds on ``ids`` are then released in the
    background (:func:`_release`) once the store answers. Left, they held every writer of
    those ids off for the lease's whole term (60 s for graph rows: a batch applied ~50 s
    after a killed store was back, measured)."""
    try:
        yield
    except BaseException:
        task = asyncio.ensure_future(_release(locks, ids, token, within_s))
        _RELEASING.add(task)
        task.add_done_callback(_RELEASING.discard)
        raise


#: joins a lease's id and the holder it is taken from into the id of the take-over's arbiter
_OVER = "\x1f"


async def free_leases(
    locks: Any,
    over: Mapping[str, str],
    now: datetime,
    token: str,
    lease_s: float,
    take_over: TakeOver | None = None,
) -> None:
    """Delete the leases ``over`` (``{id: owner}``, read as held no more: expired, or their
    holder gone), each by exactly one of the contenders that read it so, after its
    ``take_over`` (``{id: owner}`` of the leases it won) succeeded.

    A delete filtered by the dead owner is not atomic on FerretDB 1.x (it reads, then deletes
    by ``_id``): a contender's delete landed after another had deleted the dead lease and
    inserted its own, and removed that one; a third took it too (8 contenders: 2 holders in
    2–4 of 80 rounds). So each take-over first inserts an arbiter ``{_id: "<id>\\x1f<dead
    owner>"}``; only its winner, and only while the lease is still the dead holder's, runs
    ``take_over``, deletes the lease, then drops the arbiter (run by every contender, the
    fences rewrote a new holder's document, and their concurrent upserts failed: 6 of ~300
    racing hides lost, 20–31 failed). A contender that finds the arbiter stays off (one whose
    winner died or held it past ``lease_s`` is taken over the same way, one level down)."""
    pending = {f"{i}{_OVER}{o}": (i, o) for i, o in over.items()}
    for _ in range(8):  # levels of arbiters whose winner died (one, but for crashes)
        if not pending:
            return
        docs = [
            {"_id": a, "owner": token, "expires": now + timedelta(seconds=lease_s)} | holder()
            for a in pending
        ]
        lost: list[str] = []
        try:
            await locks.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
            lost = [docs[e["index"]]["_id"] for e in exc.details["writeErrors"]]
        won = [a for a in pending if a not in set(lost)]
        if won:
            try:
                # still the dead holder's: a contender that read it long ago finds it freed
                # (and maybe held again: its fence would rewrite the holder's documents)
                previous = dict(pending[a] for a in won)
                found = await locks.find({"_id": {"$in": sorted(previous)}}).to_list(None)
                held = {str(d["_id"]): str(d.get("owner")) for d in found}
                previous = {i: o for i, o in previous.items() if held.get(i) == o}
                if take_over is not None and previous:
                    await take_over(previous)
                owners = sorted(set(previous.values()))
                await locks.delete_many(
                    {"_id": {"$in": sorted(previous)}, "owner": {"$in": owners}}
                )
            finally:  # the arbiters go, also when the take-over failed (another tries then)
                with contextlib.suppress(PyMongoError):
                    await locks.delete_many({"_id": {"$in": won}, "owner": token})
        if not lost:
            return
        # an arbiter another contender holds: it frees the lease, unless it died meanwhile
        found = await locks.find({"_id": {"$in": lost}}).to_list(None)
        pending = {
            f"{d['_id']}{_OVER}{d.get('owner')}": pending[str(d["_id"])]
            for d in found
            if held_until_over(d, now)
        }


@contextlib.asynccontextmanager
async def lease(
    locks: Any,
    ids: Iterable[str],
    *,
    lease_s: float,
    wait_s: float,
    what: str,
    take_over: TakeOver | None = None,
) -> AsyncIterator[Lease]:
    """Hold leases on all ``ids`` in the ``locks`` collection (all or none, jittered backoff).

    ``insert_many({_id, owner, expires, host, pid, started})`` is atomic per id on FerretDB
    too; ids someone else holds make this caller release what it got and retry; a lease whose
    holder died is taken over: expired, or at once when it was a process of this host that is
    gone (``opendisco._holder``: killed with -9, its leases held every writer of those items or
    members off for ``lease_s`` after a restart, and the events recovery sweep gave up and
    waited a cadence); after ``wait_s`` :class:`StoreBackendError` names the busy ids. Held
    leases are renewed every ``lease_s / 3`` (:func:`renewing`), so only a crashed (or frozen)
    holder's expire. A lock write that fails (the store cut, a timeout) may have landed, or
    left them held: they are released in the background once the store answers
    (:func:`_released_on_error`).

    ``take_over`` (``{id: previous holder's token}``) runs before leases are taken over, and
    they are freed only once it succeeded: whoever inserts a freed lease next (this caller or
    another waiter) finds the previous holder's late writes fenced (``signals._store_fence``).
    A lease held no more is freed by one contender alone (:func:`free_leases`).
    """
    ids = sorted(set(ids))
    token = uuid.uuid4().hex
    held = Lease(token)
    if not ids:
        yield held
        return
    me = holder()
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=lease_s)
        docs = [{"_id": u, "owner": token, "expires": expires} | me for u in ids]
        with _released_on_error(locks, ids, token, lease_s), backend_errors(f"{what} lock failed"):
            try:
                await locks.insert_many(docs, ordered=False)
                break
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
                busy = [docs[e["index"]]["_id"] for e in exc.details["writeErrors"]]
                got = [u for u in ids if u not in set(busy)]
                if got:  # all or none: avoids two batches waiting on each other
                    await locks.delete_many({"_id": {"$in": got}, "owner": token})
                # take over leases whose holder died: gone (read first, and every 8th try)
                # or expired
                if attempt % 8 == 0:
                    found = await locks.find({"_id": {"$in": busy}}).to_list(None)
                    over = [d for d in found if held_until_over(d, now)]
                else:
                    late = {"_id": {"$in": busy}, "expires": {"$lt": now}}
                    over = await locks.find(late, projection={"owner": 1}).to_list(None)
                if over:
                    previous = {str(d["_id"]): str(d.get("owner")) for d in over}
                    await free_leases(locks, previous, now, token, lease_s, take_over)
        attempt += 1
        if time.monotonic() > deadline:
            raise StoreBackendError(f"{what} busy: {busy[:5]} (waited {wait_s}s)")
        raise_lost_cancel()
        await asyncio.sleep(random.uniform(0.002, 0.004 * 2 ** min(attempt, 5)))

    async def extend() -> None:
        expires = datetime.now(UTC) + timedelta(seconds=lease_s)
        with backend_errors(f"{what} lease renewal failed"):
            await locks.update_many(
                {"_id": {"$in": ids}, "owner": token}, {"$set": {"expires": expires}}
            )

    try:
        # renewed while held: a holder slower than ``lease_s`` (a stalled store, a slow
        # engine read) kept working after its lease expired, beside the writer that took it
        # over, and the one that wrote last undid the other's read-modify-write
        async with renewing(extend, lease_s / 3):
            yield held
    finally:
        if not held.kept:
            with contextlib.suppress(PyMongoError), _released_on_error(locks, ids, token, lease_s):
                await locks.delete_many({"_id": {"$in": ids}, "owner": token})


@contextlib.asynccontextmanager
async def leased_unless_atomic(
    db: Any, locks: str, ids: Iterable[str], *, lease_s: float, wait_s: float, what: str
) -> AsyncIterator[None]:
    """:func:`lease` on ``ids`` (in the ``locks`` collection of ``db``) only where one update of
    a document is not atomic (:attr:`StoreCapabilities.atomic_updates`: FerretDB 1.x rewrites
    whole documents, so concurrent updates of one lose all but the last); on MongoDB the block
    runs without the lease's round trips."""
    if (await detect_capabilities(db)).atomic_updates:
        yield
        return
    async with lease(db[locks], ids, lease_s=lease_s, wait_s=wait_s, what=what):
        yield


@contextlib.asynccontextmanager
async def renewing(
    renew: Callable[[], Awaitable[None]],
    every_s: float,
    on_error: Callable[[BackendError], None] | None = None,
) -> AsyncIterator[None]:
    """Run ``renew`` every ``every_s`` seconds in the background while the block runs (leases
    and claims held through a long piece of work). A backend error goes to ``on_error`` and
    the next round tries again; the holder's own guard decides whether the work may go on.

    Leaving the block waits for a round in flight instead of cancelling it: a cancelled update
    the server received still lands, and where one update is not atomic (FerretDB 1.x rewrites
    the whole document) it could land after, and undo, the holder's next write of the same
    documents (marking its events applied, giving its claims up)."""
    stop = asyncio.Event()

    async def loop() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return
            try:
                await renew()
            except BackendError as exc:
                if on_error is not None:
                    on_error(exc)

    task = asyncio.ensure_future(loop())
    try:
        yield
    finally:
        stop.set()
        # shielded: a caller cancelled meanwhile is cancelled, the round still finishes (and
        # the loop ends after it)
        await asyncio.shield(task)
