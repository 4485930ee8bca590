"""Events → real-time signals: validated, claimed once, applied in one pass.

Order of one :meth:`EventProcessor.apply` call (FerretDB has no transactions, so the order is
the guarantee)::

    1. validate every event (pure)            malformed → rejected, nothing written for it
    2. read: user states (1 find) + items (1 mget of content/behaviour vectors, category, kind)
                                              unknown item → rejected, nothing written for it
    3. claim: insert_many into `events` with _id = event id, applied=False and a claim (owner,
       generation, expiry; see ``_claims``), ordered=False. An id already stored is
                                              applied → duplicate (no-op)
                                              claimed, claim live → in flight in another
                                                call: waited for (events_claim_wait_s), then a
                                                duplicate; still running → in_flight
                                              claimed, claim expired → its holder died: taken
                                                over (one taker wins) and applied: recovered
    4. effects (claims renewed while they run; ``_apply``): user_state (idempotent: entries
       keyed by event id, vectors recomputed, under per-user leases; one bulk of replaces for
       the batch; the co-engagement pairs are computed from the fresh states inside the
       leases, so concurrent batches of one member link each pair once), exposure counters
       (ExposureStore.record), co-engagement graph (one read and one write per distinct source
       item, its new edges coalesced, under item leases), mutual likes, blocks between members
       (a hide of a profile, both directions), inbound attention counters (profiles)
    5. mark: update_many applied=True

Everything that can reject an event happens before its first write. Concurrent posts of one
event apply it once (the claim), and a call returns only when every event it was given is
applied by it or by another call (or reports the ones still running as ``in_flight``). User
state is exactly-once. A call that fails in 4 (an engine or store error) gives its claims up at
once and records on its events the counters and graph weights it completed, so the call that
takes them over adds only the rest: those are exactly-once too, except after a crash (or a
lost release) between writing one and 5, whose recovery adds it again (at-least-once there),
and except for an engine write the call saw fail that was applied all the same (after the
client timed out). A counters ``_bulk`` applied in part is read item by item: the events whose
items it wrote record it done, the others do not (``_apply``). Raw events expire
through a TTL index on ``ts``; expired claims are also recovered by a periodic sweep
(:meth:`EventProcessor.recover_expired`), so an event whose holder died is applied even when
no client retries it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import NotFoundError

from opendisco._backend import backend_errors
from opendisco._exceptions import EventInvalid, SearchBackendError
from opendisco._settings import Settings
from opendisco._store import create_collection, detect_capabilities

from ._apply import EffectWriter, stored_items
from ._blocks import MEMBER_BLOCK_LOCKS, MEMBER_BLOCKS, BlockStore
from ._claims import CLAIMS, EventClaims, classify
from ._event import Event, EventsConfig, EventsResult, validate_event
from ._exposure import ExposureStore
from ._graph import ITEM_EDGES, ITEM_LOCKS, ItemGraph
from ._inbound import INBOUND, InboundCounter, ensure_inbound_indexes
from ._members import (
    INBOX_LOCKS,
    USER_INBOX,
    USER_LIKES,
    USER_MATCHES,
    UserGraph,
    ensure_member_indexes,
)
from ._pacing import PACING, PACING_LOCKS
from ._user_state import MEMBER_TASTES, USER_LOCKS, USER_STATE, UserStateStore

__all__ = ["EVENTS", "EventProcessor"]

EVENTS = "events"
_ENSURE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
log = logging.getLogger("opendisco.signals")


def _ensure_lock() -> asyncio.Lock:
    """One lock per event loop (an asyncio.Lock is bound to the loop that first uses it)."""
    loop = asyncio.get_running_loop()
    lock = _ENSURE_LOCKS.get(loop)
    if lock is None:
        lock = _ENSURE_LOCKS[loop] = asyncio.Lock()
    return lock


def _stored(ev: Event, weight: float, now: datetime) -> dict[str, Any]:
    doc = {**ev.model_dump(exclude_none=True), "_id": ev.id, "weight": weight, "received_at": now}
    doc.pop("id", None)
    return doc


def _raw(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event back to the fields a client posted (for the recovery sweep)."""
    raw = {k: doc[k] for k in Event.model_fields if k != "id" and doc.get(k) is not None}
    return {**raw, "id": doc["_id"]}


class EventProcessor:
    """Validates and applies event batches (see the module docstring for the order)."""

    def __init__(
        self,
        settings: Settings,
        db: Any,
        os_client: AsyncOpenSearch,
        *,
        config: EventsConfig | None = None,
        exposure: Any | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.os = os_client
        self.cfg = config or EventsConfig()
        self.events = db[EVENTS]
        self.claims = EventClaims(db, lease_s=settings.events_claim_lease_s)
        self.states = UserStateStore(db, self.cfg.user_state)
        self.items = ItemGraph(db)
        self.users = UserGraph(db)
        self.inbound = InboundCounter(db)
        self.blocks = BlockStore(db)
        self.exposure = exposure if exposure is not None else ExposureStore(os_client, settings)
        self.writer = EffectWriter(
            self.states,
            self.items,
            self.users,
            self.blocks,
            self.inbound,
            self.exposure,
            self.cfg,
            self._items,
            count_served=settings.exposure_count_served,
        )
        self._ready = False  # every index ensured, the engine's included
        self._store_ready = False  # MongoDB's collections and indexes ensured
        self.native_ttl = True
        self._last_purge = 0.0
        self._last_recover = time.monotonic()  # the first sweep one cadence after start

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete raw events older than the retention (what a TTL index does); returns count.

        Safe for idempotency: an event that old is rejected by validation anyway.
        """
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.cfg.ttl_days)
        with backend_errors("purging expired events failed"):
            res = await self.events.delete_many({"ts": {"$lt": cutoff}})
        await self.claims.purge(cutoff)
        return res.deleted_count

    async def recover_expired(self, limit: int = 1000) -> EventsResult:
        """Apply stored events whose claim expired unapplied (their holder died and no client
        retried them); one ``find`` on ``applied`` (an index on MongoDB, a scan on FerretDB)."""
        if not self._ready:
            await self.ensure()
        with backend_errors("recovery scan failed"):
            docs = await self.events.find({"applied": False}, limit=limit).to_list(None)
        now = datetime.now(UTC)
        stale = [d for d in docs if (st := classify(d, now)).expired and not st.applied]
        if not stale:
            return EventsResult()
        res = await self._apply([_raw(d) for d in stale], now)
        if res.recovered:
            log.warning("recovered %d events left by a dead holder", res.recovered)
        return res

    async def ensure(self) -> None:
        """Indexes: TTL on ``events.ts``, lookups on user/type, graph collections, exposure.

        Where the server has no TTL indexes (FerretDB 1.x) a plain ``ts`` index is created and
        :meth:`purge_expired` runs from :meth:`apply` at most every ``purge_every_s``. The
        exposure counters index is the engine's: while the engine fails it is tried again by
        the next call, events that need no engine write (blocks, hides, passes) are applied
        meanwhile and the others fail before any write (a counter write must not create the
        index with dynamic mappings).
        """
        if not self._store_ready:
            await self._ensure_store()
        try:
            await self.exposure.ensure()
        except SearchBackendError as exc:
            log.warning("events: exposure counters index not ensured yet: %.200s", exc)
            return
        self._ready = self.writer.engine_ready = True

    async def _ensure_store(self) -> None:
        async with _ensure_lock():
            # FerretDB 1.x (SQLite) can deadlock when a collection is created implicitly while
            # other writes are in flight; so every collection is created here, one at a time,
            # before any concurrent write touches it
            with backend_errors("events collections"):
                have = set(await self.db.list_collection_names())
                for name in (
                    EVENTS,
                    CLAIMS,
                    USER_STATE,
                    USER_LOCKS,
                    MEMBER_TASTES,
                    ITEM_EDGES,
                    ITEM_LOCKS,
                    USER_LIKES,
                    USER_MATCHES,
                    USER_INBOX,
                    INBOX_LOCKS,
                    INBOUND,
                    PACING,
                    PACING_LOCKS,
                    MEMBER_BLOCKS,
                    MEMBER_BLOCK_LOCKS,
                ):
                    if name not in have:
                        await create_collection(self.db, name)
            await self._ensure_indexes()

    async def _ensure_indexes(self) -> None:
        self.native_ttl = (await detect_capabilities(self.db)).ttl_indexes
        with backend_errors("events index creation failed"):
            if self.native_ttl:
                await self.events.create_index(
                    "ts", expireAfterSeconds=int(self.cfg.ttl_days * 86400), name="ttl_ts"
                )
            else:  # FerretDB 1.x: no TTL indexes; purge_expired stands in
                await self.events.create_index("ts", name="ts")
            await self.events.create_index("user_id")
            await self.events.create_index("type")
            await self.events.create_index("applied")
        await ensure_inbound_indexes(self.db)
        await ensure_member_indexes(self.db)
        self._store_ready = True

    # --- reads ------------------------------------------------------------------------------

    async def _items(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The items' vectors, category, kind and owner from the engine (one ``mget``); when
        the engine fails, all but the vectors from MongoDB (:func:`~._apply.stored_items`):
        a member can block, pass and hide while the engine is down. So are the documents the
        ``mget`` answers with an error (a shard that rejected or failed its part): read as
        missing, their events were rejected as about an unknown item, and lost."""
        if not ids:
            return {}
        try:
            with backend_errors("item lookup for events failed"):
                try:
                    resp = await self.os.mget(
                        index=self.settings.index_alias,
                        body={"ids": list(ids)},
                        params={
                            "_source_includes": "embedding,behaviour,category,kind,owner_id",
                            "realtime": "true",
                        },
                        request_timeout=self.settings.events_engine_timeout_s,
                    )
                except NotFoundError:  # no items index yet
                    return {}
        except SearchBackendError as exc:
            log.warning("event items read from MongoDB, vectors kept (engine: %.200s)", exc)
            return await stored_items(self.db[self.settings.items_collection], ids)
        docs = resp["docs"]
        out = {d["_id"]: d.get("_source") or {} for d in docs if d.get("found")}
        if failed := [str(d["_id"]) for d in docs if d.get("error")]:
            # a shard that failed to answer (e.g. 429 from its get queue) is not "unknown item"
            first = next(d["error"] for d in docs if d.get("error"))
            log.warning("%d event items read from MongoDB (engine: %.200s)", len(failed), first)
            out.update(await stored_items(self.db[self.settings.items_collection], failed))
        return out

    # --- apply ------------------------------------------------------------------------------

    async def apply(self, events: Sequence[Any], now: datetime | None = None) -> EventsResult:
        """Validate and apply a batch; see :class:`EventsResult`."""
        if not self._ready:
            await self.ensure()
        now = now or datetime.now(UTC)
        if not self.native_ttl and time.monotonic() - self._last_purge > self.cfg.purge_every_s:
            self._last_purge = time.monotonic()
            await self.purge_expired(now)
        if time.monotonic() - self._last_recover > self.settings.events_recover_every_s:
            self._last_recover = time.monotonic()
            await self.recover_expired()
        if len(events) > self.cfg.max_batch:
            raise EventInvalid(f"at most {self.cfg.max_batch} events per call")
        return await self._apply(events, now)

    async def _apply(self, events: Sequence[Any], now: datetime) -> EventsResult:
        t0 = time.perf_counter()
        out = EventsResult()
        # 1. validate (pure)
        valid: list[tuple[int, Event]] = []
        ids_in_batch: set[str] = set()
        for i, raw in enumerate(events):
            try:
                ev = validate_event(raw, now, self.cfg)
            except EventInvalid as exc:
                out.rejected.append((i, str(exc)))
                continue
            if ev.id in ids_in_batch:
                out.duplicates += 1
                continue
            ids_in_batch.add(ev.id)
            valid.append((i, ev))

        # 2. reads (no writes yet)
        items: dict[str, dict[str, Any]] = {}
        if valid:
            states = await self.states.get_many(ev.user_id for _, ev in valid)
            wanted = {ev.item_id for _, ev in valid}
            for st in states.values():
                wanted.update(e["id"] for e in (*st.positives, *st.negatives))
            items = await self._items(sorted(wanted))
        if valid and self.cfg.require_known_items:
            keep = []
            for i, ev in valid:
                if ev.item_id in items:
                    keep.append((i, ev))
                else:
                    out.rejected.append((i, f"item_id: unknown item {ev.item_id!r}"))
            valid = keep
        out.rejected.sort()
        if valid:
            # 3.-5. claim, effects, mark
            await self._claim_and_apply([ev for _, ev in valid], items, now, out)
        out.took_ms = (time.perf_counter() - t0) * 1e3
        return out

    async def _claim_and_apply(
        self, evs: list[Event], items: dict[str, dict[str, Any]], now: datetime, out: EventsResult
    ) -> None:
        """Claim ``evs``; apply the claimed ones; wait for those another call holds (taking
        over any whose claim expires meanwhile) until ``events_claim_wait_s`` has passed."""
        token = uuid.uuid4().hex
        by_id = {ev.id: ev for ev in evs}
        done: dict[str, frozenset[str]] = {}  # taken over: what the failed holder completed
        docs = [_stored(ev, self.cfg.weights.get(ev.type, 0.0), now) for ev in evs]
        waiting = await self.claims.insert(self.claims.stamp(docs, token))
        mine = [ev for ev in evs if ev.id not in waiting]
        out.accepted = len(mine)
        deadline = time.monotonic() + self.settings.events_claim_wait_s
        pause = 0.01
        while True:
            if waiting:
                status = await self.claims.status(waiting)
                applied = {i for i, st in status.items() if st.applied}
                expired = {i: st.gen for i, st in status.items() if not st.applied and st.expired}
                won = await self.claims.take_over(expired, token) if expired else set()
                out.duplicates += len(applied)
                out.recovered += len(won)
                waiting -= applied | won
                mine += [by_id[i] for i in sorted(won)]
                done.update((i, status[i].done) for i in won)
            if mine:
                ids = [ev.id for ev in mine]
                completed: list[str] = []
                partly: dict[str, set[str]] = {}  # an engine _bulk applied in part
                try:
                    async with self.claims.renewing(ids, token):
                        await self.writer.apply(mine, items, now, out, done, completed, partly)
                except BaseException:
                    # a failed call gives its claims up at once: a retry takes them over now
                    # instead of waiting for them to expire, and skips the additive effects
                    # this call completed (the idempotent ones are done again)
                    await asyncio.shield(self.claims.release(ids, token, completed, partly))
                    raise
                await self.claims.mark(ids)  # 5.
                mine = []
            if not waiting or time.monotonic() >= deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)
        out.in_flight = len(waiting)
