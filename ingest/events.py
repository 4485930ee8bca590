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
       item of the batch, its new edges coalesced, under item leases), mutual likes, inbound
       attention counters (profiles)
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opendisco._exceptions import EventInvalid, SearchBackendError, StoreBackendError
from opendisco._settings import Settings

from .graph import InboundCounter, ItemGraph, UserGraph, ensure_graph_indexes
from .user_state import UserState, UserStateConfig, UserStateStore, merge_events, recompute

if TYPE_CHECKING:
    from opensearchpy import AsyncOpenSearch

__all__ = [
    "EVENTS",
    "EVENT_TYPES",
    "Event",
    "EventProcessor",
    "EventsConfig",
    "EventsResult",
    "UserState",
    "UserStateStore",
    "validate_event",
]

EVENTS = "events"
_ENSURE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _ensure_lock() -> asyncio.Lock:
    """One lock per event loop (an asyncio.Lock is bound to the loop that first uses it)."""
    loop = asyncio.get_running_loop()
    lock = _ENSURE_LOCKS.get(loop)
    if lock is None:
        lock = _ENSURE_LOCKS[loop] = asyncio.Lock()
    return lock


EventType = Literal["impression", "click", "like", "pass", "skip", "hide", "match", "message"]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
_INBOUND_TYPES = {"like", "match", "message"}
_MUTUAL_TYPES = {"like", "match"}


class EventsConfig(BaseModel):
    """Weights and retention of events (pydantic, ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "impression": 0.0,
            "click": 0.5,
            "like": 1.0,
            "match": 2.0,
            "message": 1.0,
            "pass": -0.5,
            "skip": -0.5,
            "hide": -1.0,
        },
        description="Signed weight per event type (positive → positives, negative → negatives).",
    )
    ttl_days: float = Field(30.0, gt=0, description="Raw events expire after this many days.")
    max_future_skew_s: float = Field(300.0, ge=0, description="Tolerated client clock skew.")
    graph_fanout: int = Field(20, ge=0, description="Recent positives a new positive links to.")
    require_known_items: bool = Field(True, description="Reject events for unindexed items.")
    max_batch: int = Field(1000, ge=1)
    purge_every_s: float = Field(300.0, gt=0, description="Purge cadence without TTL indexes.")
    user_state: UserStateConfig = Field(default_factory=UserStateConfig)


class Event(BaseModel):
    """One client event; ``id`` is the client's idempotency key."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200)
    type: EventType
    user_id: str = Field(min_length=1, max_length=512)
    item_id: str = Field(min_length=1, max_length=512)
    ts: datetime | None = None
    surface: str | None = Field(None, max_length=64)
    request_id: str | None = Field(None, max_length=200)
    position: int | None = Field(None, ge=0)
    features: list[float] | None = Field(None, max_length=64)

    @field_validator("ts")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate_event(raw: Any, now: datetime, cfg: EventsConfig) -> Event:
    """Pure validation; raises :class:`EventInvalid` with a readable reason."""
    if not isinstance(raw, Mapping):
        raise EventInvalid(f"event must be an object, got {type(raw).__name__}")
    try:
        ev = Event.model_validate(dict(raw))
    except ValidationError as exc:
        raise EventInvalid(_reason(exc)) from None
    if ev.ts is None:
        ev = ev.model_copy(update={"ts": now})
    assert ev.ts is not None
    if ev.ts > now + timedelta(seconds=cfg.max_future_skew_s):
        raise EventInvalid(f"ts: {ev.ts.isoformat()} is in the future")
    if ev.ts < now - timedelta(days=cfg.ttl_days):
        raise EventInvalid(f"ts: older than the {cfg.ttl_days:g}-day retention")
    return ev


@dataclass
class EventsResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    recovered: int = 0  # claimed by an earlier, interrupted call and applied now
    capped: list[str] = field(default_factory=list)
    mutual: list[tuple[str, str]] = field(default_factory=list)
    took_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{"index": i, "reason": r} for i, r in self.rejected],
            "recovered": self.recovered,
            "capped": self.capped,
            "took_ms": round(self.took_ms, 2),
        }


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
        if exposure is None:
            from opendisco.queries.exposure import ExposureStore

            exposure = ExposureStore(os_client, settings)
        self.exposure = exposure
        self._ready = False
        self.native_ttl = True
        self._last_purge = 0.0

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete raw events older than the retention (what a TTL index does); returns count.

        Safe for idempotency: an event that old is rejected by validation anyway.
        """
        from pymongo.errors import PyMongoError

        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.cfg.ttl_days)
        try:
            res = await self.events.delete_many({"ts": {"$lt": cutoff}})
        except PyMongoError as exc:
            raise StoreBackendError(f"purging expired events failed: {exc}") from exc
        return res.deleted_count

    async def ensure(self) -> None:
        """Indexes: TTL on ``events.ts``, lookups on user/type, graph collections, exposure.

        Where the server has no TTL indexes (FerretDB 1.x) a plain ``ts`` index is created and
        :meth:`purge_expired` runs from :meth:`apply` at most every ``purge_every_s``.
        """
        from pymongo.errors import CollectionInvalid, PyMongoError

        from .graph import INBOUND, ITEM_EDGES, ITEM_LOCKS, USER_LIKES, USER_MATCHES
        from .user_state import USER_LOCKS, USER_STATE

        async with _ensure_lock():
            # FerretDB 1.x (SQLite) can deadlock when a collection is created implicitly while
            # other writes are in flight; so every collection is created here, one at a time,
            # before any concurrent write touches it
            try:
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
                ):
                    if name not in have:
                        with contextlib.suppress(CollectionInvalid):
                            await self.db.create_collection(name)
            except PyMongoError as exc:
                raise StoreBackendError(f"events collections: {exc}") from exc
            await self._ensure_indexes()

    async def _ensure_indexes(self) -> None:
        from pymongo.errors import OperationFailure, PyMongoError

        try:
            try:
                await self.events.create_index(
                    "ts", expireAfterSeconds=int(self.cfg.ttl_days * 86400), name="ttl_ts"
                )
                self.native_ttl = True
            except OperationFailure as exc:
                if exc.code != 238:  # NotImplemented: FerretDB 1.x has no TTL indexes
                    raise
                await self.events.create_index("ts", name="ts")
                self.native_ttl = False
            await self.events.create_index("user_id")
            await self.events.create_index("type")
        except PyMongoError as exc:
            raise StoreBackendError(f"events index creation failed: {exc}") from exc
        await ensure_graph_indexes(self.db)
        await self.exposure.ensure()
        self._ready = True

    # --- reads ------------------------------------------------------------------------------

    async def _items(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        from opensearchpy.exceptions import NotFoundError, OpenSearchException

        if not ids:
            return {}
        try:
            resp = await self.os.mget(
                index=self.settings.index_alias,
                body={"ids": list(ids)},
                params={
                    "_source_includes": "embedding,behaviour,category,kind,owner_id",
                    "realtime": "true",
                },
            )
        except NotFoundError:
            return {}
        except OpenSearchException as exc:
            raise SearchBackendError(f"item lookup for events failed: {exc}") from exc
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
        from pymongo.errors import BulkWriteError, PyMongoError

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
        try:
            await self.events.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                if err.get("code") != 11000:
                    raise StoreBackendError(f"event insert failed: {err.get('errmsg')}") from exc
                clashed.add(docs[err["index"]]["_id"])
        except PyMongoError as exc:
            raise StoreBackendError(f"event insert failed: {exc}") from exc
        recovered: set[str] = set()
        if clashed:
            try:
                prior = await self.events.find(
                    {"_id": {"$in": sorted(clashed)}}, projection={"applied": 1}
                ).to_list(None)
            except PyMongoError as exc:
                raise StoreBackendError(f"event lookup failed: {exc}") from exc
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
            if ev.type in _MUTUAL_TYPES and it.get("kind") == "profile":
                likes.append((ev.user_id, str(it.get("owner_id") or ev.item_id)))
        # inbound attention is a recipient's load (two-sided markets): only profiles have one; a
        # movie or product liked by many is popular, not overloaded
        inbound = [
            (ev.item_id, ev.ts)
            for ev in todo
            if ev.type in _INBOUND_TYPES and items.get(ev.item_id, {}).get("kind") == "profile"
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
        from pymongo.errors import PyMongoError

        try:
            # one update_many: a bulk of many point updates on `events` was seen to hang
            # FerretDB 1.24 (SQLite); $in is a scan there, but correct
            await self.events.update_many({"_id": {"$in": ids}}, {"$set": {"applied": True}})
        except PyMongoError as exc:
            raise StoreBackendError(f"marking events applied failed: {exc}") from exc


async def _none() -> None:
    return None
