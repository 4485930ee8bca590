"""Events → real-time signals: validated, idempotent by client event id, applied in one pass.

Order of one :meth:`EventProcessor.apply` call (FerretDB has no transactions, so the order is
the guarantee)::

    1. validate every event (pure)            malformed → rejected, nothing written for it
    2. read: user states (1 find) + items (1 mget of content/behaviour vectors, category, kind)
                                              unknown item → rejected, nothing written for it
    3. claim: insert_many into `events` with _id = event id, applied=False (ordered=False)
                                              duplicate key + applied=True → duplicate (no-op)
                                              duplicate key + applied=False → a crashed run
                                              claimed it: re-applied now (retry-safe)
    4. effects: user_state (idempotent: entries keyed by event id, vectors recomputed, under
       per-user leases; one bulk of replaces for the batch), exposure counters
       (ExposureStore.record), co-engagement graph (one read and one write per distinct source
       item of the batch, its new edges coalesced, under item leases), mutual likes, blocks
       between members (a hide of a profile, both directions), inbound attention counters
       (profiles)
    5. mark: update_many applied=True

Everything that can reject an event happens before its first write. User state is exactly-once;
counters and graph weights are at-least-once (a crash between 4 and 5 makes the retry add them
again). Raw events expire through a TTL index on ``ts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import Any

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import NotFoundError
from pymongo.errors import BulkWriteError, CollectionInvalid

from opendisco._backend import backend_errors
from opendisco._exceptions import EventInvalid
from opendisco._settings import Settings
from opendisco._store import detect_capabilities

from ._blocks import MEMBER_BLOCK_LOCKS, MEMBER_BLOCKS, BlockStore
from ._event import INBOUND_TYPES, MUTUAL_TYPES, Event, EventsConfig, EventsResult, validate_event
from ._exposure import ExposureStore
from ._graph import (
    INBOUND,
    ITEM_EDGES,
    ITEM_LOCKS,
    USER_LIKES,
    USER_MATCHES,
    InboundCounter,
    ItemGraph,
    UserGraph,
    ensure_graph_indexes,
)
from ._user_state import USER_LOCKS, USER_STATE, UserState, UserStateStore, merge_events, recompute

__all__ = ["EVENTS", "EventProcessor"]

EVENTS = "events"
_ENSURE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _ensure_lock() -> asyncio.Lock:
    """One lock per event loop (an asyncio.Lock is bound to the loop that first uses it)."""
    loop = asyncio.get_running_loop()
    lock = _ENSURE_LOCKS.get(loop)
    if lock is None:
        lock = _ENSURE_LOCKS[loop] = asyncio.Lock()
    return lock


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
        self.states = UserStateStore(db, self.cfg.user_state)
        self.items = ItemGraph(db)
        self.users = UserGraph(db)
        self.inbound = InboundCounter(db)
        self.blocks = BlockStore(db)
        self.exposure = exposure if exposure is not None else ExposureStore(os_client, settings)
        self._ready = False
        self.native_ttl = True
        self._last_purge = 0.0

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete raw events older than the retention (what a TTL index does); returns count.

        Safe for idempotency: an event that old is rejected by validation anyway.
        """
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.cfg.ttl_days)
        with backend_errors("purging expired events failed"):
            res = await self.events.delete_many({"ts": {"$lt": cutoff}})
        return res.deleted_count

    async def ensure(self) -> None:
        """Indexes: TTL on ``events.ts``, lookups on user/type, graph collections, exposure.

        Where the server has no TTL indexes (FerretDB 1.x) a plain ``ts`` index is created and
        :meth:`purge_expired` runs from :meth:`apply` at most every ``purge_every_s``.
        """
        async with _ensure_lock():
            # FerretDB 1.x (SQLite) can deadlock when a collection is created implicitly while
            # other writes are in flight; so every collection is created here, one at a time,
            # before any concurrent write touches it
            with backend_errors("events collections"):
                have = set(await self.db.list_collection_names())
                for name in (
                    EVENTS,
                    USER_STATE,
                    USER_LOCKS,
                    ITEM_EDGES,
                    ITEM_LOCKS,
                    USER_LIKES,
                    USER_MATCHES,
                    INBOUND,
                    MEMBER_BLOCKS,
                    MEMBER_BLOCK_LOCKS,
                ):
                    if name not in have:
                        with contextlib.suppress(CollectionInvalid):
                            await self.db.create_collection(name)
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
        await ensure_graph_indexes(self.db)
        await self.exposure.ensure()
        self._ready = True

    # --- reads ------------------------------------------------------------------------------

    async def _items(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        with backend_errors("item lookup for events failed"):
            try:
                resp = await self.os.mget(
                    index=self.settings.index_alias,
                    body={"ids": list(ids)},
                    params={
                        "_source_includes": "embedding,behaviour,category,kind,owner_id",
                        "realtime": "true",
                    },
                )
            except NotFoundError:  # no items index yet
                return {}
        return {d["_id"]: d.get("_source") or {} for d in resp["docs"] if d.get("found")}

    # --- apply ------------------------------------------------------------------------------

    async def apply(self, events: Sequence[Any], now: datetime | None = None) -> EventsResult:
        """Validate and apply a batch; see :class:`EventsResult`."""
        t0 = perf_counter()
        if not self._ready:
            await self.ensure()
        now = now or datetime.now(UTC)
        out = EventsResult()
        if not self.native_ttl and perf_counter() - self._last_purge > self.cfg.purge_every_s:
            self._last_purge = perf_counter()
            await self.purge_expired(now)
        if len(events) > self.cfg.max_batch:
            raise EventInvalid(f"at most {self.cfg.max_batch} events per call")

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
        if not valid:
            out.took_ms = (perf_counter() - t0) * 1e3
            return out

        # 2. reads (no writes yet)
        states = await self.states.get_many(ev.user_id for _, ev in valid)
        wanted = {ev.item_id for _, ev in valid}
        for st in states.values():
            wanted.update(e["id"] for e in (*st.positives, *st.negatives))
        items = await self._items(sorted(wanted))
        if self.cfg.require_known_items:
            keep = []
            for i, ev in valid:
                if ev.item_id in items:
                    keep.append((i, ev))
                else:
                    out.rejected.append((i, f"item_id: unknown item {ev.item_id!r}"))
            valid = keep
        out.rejected.sort()
        if not valid:
            out.took_ms = (perf_counter() - t0) * 1e3
            return out

        # 3. claim
        todo, out.duplicates, out.recovered = await self._claim(valid, now, out.duplicates)
        out.accepted = len(todo) - out.recovered
        if todo:
            # 4. effects
            await self._effects(todo, states, items, now, out)
            # 5. mark
            await self._mark([ev.id for ev in todo])
        out.took_ms = (perf_counter() - t0) * 1e3
        return out

    async def _claim(
        self, valid: list[tuple[int, Event]], now: datetime, dups: int
    ) -> tuple[list[Event], int, int]:
        docs = [
            {
                **ev.model_dump(exclude_none=True),
                "_id": ev.id,
                "weight": self.cfg.weights.get(ev.type, 0.0),
                "received_at": now,
                "applied": False,
            }
            for _, ev in valid
        ]
        for d in docs:
            d.pop("id", None)
        clashed: set[str] = set()
        with backend_errors("event insert failed"):
            try:
                await self.events.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
                clashed = {docs[e["index"]]["_id"] for e in exc.details["writeErrors"]}
        recovered: set[str] = set()
        if clashed:
            with backend_errors("event lookup failed"):
                prior = await self.events.find(
                    {"_id": {"$in": sorted(clashed)}}, projection={"applied": 1}
                ).to_list(None)
            recovered = {d["_id"] for d in prior if not d.get("applied")}
        todo = [ev for _, ev in valid if ev.id not in clashed or ev.id in recovered]
        return todo, dups + len(clashed) - len(recovered), len(recovered)

    async def _effects(
        self,
        todo: list[Event],
        states: dict[str, UserState],
        items: dict[str, dict[str, Any]],
        now: datetime,
        out: EventsResult,
    ) -> None:
        by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ev in todo:
            by_user[ev.user_id].append(
                {
                    "id": ev.id,
                    "type": ev.type,
                    "item_id": ev.item_id,
                    "ts": ev.ts,
                    "weight": self.cfg.weights.get(ev.type, 0.0),
                }
            )
        # co-engagement pairs: each new positive with the user's earlier positives
        pairs: list[tuple[str, str, float]] = []
        for user, evs in by_user.items():
            recent = states[user].recent_positive_ids[: self.cfg.graph_fanout]
            for ev in sorted(evs, key=lambda e: e["ts"]):
                if ev["weight"] > 0:
                    pairs += [(ev["item_id"], r, 1.0) for r in recent if r != ev["item_id"]]
                    recent = [ev["item_id"], *recent][: self.cfg.graph_fanout]
        impressions = Counter(ev.item_id for ev in todo if ev.type == "impression")
        likes = []
        for ev in todo:
            it = items.get(ev.item_id, {})
            if ev.type in MUTUAL_TYPES and it.get("kind") == "profile":
                likes.append((ev.user_id, str(it.get("owner_id") or ev.item_id)))
        # hiding a member's profile blocks that member, both ways (see signals._blocks)
        blocks = [
            (ev.user_id, str(it["owner_id"]))
            for ev in todo
            if ev.type == "hide"
            and (it := items.get(ev.item_id, {})).get("kind") == "profile"
            and it.get("owner_id")
        ]
        # inbound attention is a recipient's load (two-sided markets): only profiles have one; a
        # movie or product liked by many is popular, not overloaded
        inbound = [
            (ev.item_id, ev.ts)
            for ev in todo
            if ev.type in INBOUND_TYPES and items.get(ev.item_id, {}).get("kind") == "profile"
        ]

        # OpenSearch counters run alongside; MongoDB writes go one after another: FerretDB 1.x
        # (SQLite) was seen to hang on concurrent upserting bulk writes into one database
        exposure = asyncio.ensure_future(
            self.exposure.record(impressions, now=now) if impressions else _none()
        )
        try:
            await self._update_users(by_user, items, now)
            if pairs:
                await self.items.add(pairs, now)
            if likes:
                out.mutual = list(await self.users.add_likes(likes, now))
            if blocks:
                await self.blocks.add(blocks, now)
            if inbound:
                await self.inbound.add(inbound)
        finally:
            capped = await exposure
        out.capped = list(capped or [])

    async def _update_users(
        self,
        by_user: Mapping[str, list[dict[str, Any]]],
        items: dict[str, dict[str, Any]],
        now: datetime,
    ) -> None:
        """Read-merge-write of every touched user under their leases (see user_state)."""
        async with self.states.locked(by_user):
            states = await self.states.get_many(by_user)  # fresh: inside the lease
            need = {e["id"] for st in states.values() for e in (*st.positives, *st.negatives)}
            missing = sorted(need - set(items))
            if missing:  # another writer added positives since our first read
                items.update(await self._items(missing))
            cats = {i: (d.get("category") or None) for i, d in items.items()}
            vecs = {i: d["embedding"] for i, d in items.items() if d.get("embedding")}
            behs = {i: d["behaviour"] for i, d in items.items() if d.get("behaviour")}
            cfg = self.cfg.user_state
            await self.states.save_many(
                recompute(merge_events(states[u], evs, cats, cfg), vecs, behs, now, cfg)
                for u, evs in by_user.items()
            )

    async def _mark(self, ids: list[str]) -> None:
        # one update_many: a bulk of many point updates on `events` was seen to hang
        # FerretDB 1.24 (SQLite); $in on _id is pushed down by the patched build
        with backend_errors("marking events applied failed"):
            await self.events.update_many({"_id": {"$in": ids}}, {"$set": {"applied": True}})


async def _none() -> None:
    return None
