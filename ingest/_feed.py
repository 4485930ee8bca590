"""One change-feed protocol, two implementations, over the partitions a worker holds.

``async with feed.batches() as batches: async for batch in batches`` is one pass over the
changes of the feed's partitions not yet committed, as :class:`ChangeBatch` es, until caught
up; ``commit(batch)`` moves the partitions' checkpoints (``_checkpoints``) and is called by
sync only after every change of the batch, and of every batch before it, was acknowledged by
OpenSearch or dead-lettered. Documents of partitions the worker does not hold are skipped.

* :class:`PollingFeed` — ``updated_at`` watermark polling for servers without change streams
  (FerretDB): one cursor per pass, sorted by ``(updated_at, _id)``, read in batches of
  ``sync_batch_size`` and closed when the pass ends (FerretDB scans the collection once per
  query, so a pass costs one scan, not one per batch). A pass starts
  ``sync_overlap_seconds`` before the oldest checkpoint it holds, so a writer whose
  ``updated_at`` lags its commit is still seen (after a stall of the store, from before
  the stall: ``_stalls``), and a checkpoint never passes the reader's clock, so a writer
  whose clock runs ahead hides no other writer's writes; deletes are tombstones
  (``deleted: true``), turned into external-versioned deletes by the apply step.
  Documents whose ``updated_at`` is missing or not a date are read by every pass, so the
  apply step dead-letters them (and removes the indexed copy of a document whose new
  version lost it). What no watermark can see — hard deletes, writes backdated behind it —
  is repaired by ``_reconcile``.
* :class:`ChangeStreamFeed` — MongoDB replica-set change streams (``updateLookup``), resumed
  from the oldest token the worker's partitions hold; an event at or before a partition's own
  token is skipped for it. Lost history (the token fell off the oplog) raises
  :class:`SyncGap` and records an alert: it never restarts silently from "now". A new
  reindex floor is replayed as one ``updated_at`` window read before the stream resumes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pymongo.errors import OperationFailure

from opendisco._backend import backend_errors
from opendisco._exceptions import SyncGap
from opendisco._settings import Settings
from opendisco._store import detect_capabilities, now_ms

from ._checkpoints import Checkpoint, Floor, load_checkpoints, load_floor, save_checkpoints
from ._checkpoints import token_order as _order
from ._partitions import partition_of
from ._schema import indexable_id
from ._stalls import Stalls
from ._store import items_collection, load_state, save_state, state_key, stream

__all__ = [
    "EPOCH",
    "ChangeBatch",
    "ChangeFeed",
    "ChangeStreamFeed",
    "HardDelete",
    "PollingFeed",
    "detect_mode",
    "open_feed",
    "seed_resume_token",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOT_A_DATE = {"updated_at": {"$not": {"$type": "date"}}}


@dataclass(frozen=True)
class HardDelete:
    """A document removed from MongoDB; its version is unknown (read from the index).

    ``gone=False``: only its indexed copy goes (reconcile: MongoDB's copy lost its version),
    so its dead letter stays open."""

    id: str
    gone: bool = True


@dataclass
class ChangeBatch:
    docs: list[dict[str, Any]] = field(default_factory=list)  # full documents (tombstones too)
    hard_deletes: list[HardDelete] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.docs) + len(self.hard_deletes)


class ChangeFeed(Protocol):
    name: str
    partitions: list[int]
    rewound: bool  # the last start() replays a new reindex floor (the index changed)

    async def start(self) -> None: ...

    def batches(self) -> AbstractAsyncContextManager[AsyncIterator[ChangeBatch]]: ...

    async def commit(self, batch: ChangeBatch) -> None: ...

    async def close(self) -> None: ...


class _Partitioned:
    """What both feeds share: the partitions held, their checkpoints, the floor."""

    name = ""
    #: the collection read (``(db, settings) -> collection``)
    collection = staticmethod(items_collection)

    def __init__(
        self,
        settings: Settings,
        db: Any,
        partitions: Sequence[int] | None = None,
        owner: str = "",
    ) -> None:
        self.settings = settings
        self.db = db
        self.coll = self.collection(db, settings)
        self.partitions = sorted(
            range(settings.sync_partitions) if partitions is None else partitions
        )
        self._held = frozenset(self.partitions)
        self.owner = owner
        self.checkpoints: dict[int, Checkpoint] = {}
        self.floor: Floor | None = None
        self.rewound = False

    def mine(self, doc_id: Any) -> bool:
        return partition_of(doc_id, self.settings.sync_partitions) in self._held

    async def _load(self) -> None:
        self.checkpoints = await load_checkpoints(
            self.db, self.settings, self.name, self.partitions
        )
        self.floor = await load_floor(self.db, self.settings)

    async def _save(self) -> None:
        await save_checkpoints(
            self.db, self.settings, self.name, list(self.checkpoints.values()), self.owner
        )

    async def close(self) -> None:
        return None

    def _window(self, start: datetime) -> AbstractAsyncContextManager[Any]:
        """One cursor over what changed since ``start`` (and what has no date to poll by)."""
        query = {"$or": [{"updated_at": {"$gte": max(EPOCH, start)}}, NOT_A_DATE]}
        order = [("updated_at", 1), ("_id", 1)]
        return stream(self.coll, query, self.settings.sync_batch_size, sort=order)


class PollingFeed(_Partitioned):
    name = "polling"

    def __init__(
        self,
        settings: Settings,
        db: Any,
        partitions: Sequence[int] | None = None,
        owner: str = "",
        stalls: Stalls | None = None,
    ) -> None:
        super().__init__(settings, db, partitions, owner)
        self.stalls = stalls if stalls is not None else Stalls()

    async def start(self) -> None:
        await self._load()
        self.rewound = False
        for cp in self.checkpoints.values():
            if self.floor is not None and cp.floor_index != self.floor.index:
                cp.ts = min(cp.ts or EPOCH, self.floor.ts)  # replay what the old index got
                cp.floor_index = self.floor.index
                self.rewound = True

    @asynccontextmanager
    async def batches(self) -> AsyncIterator[AsyncIterator[ChangeBatch]]:
        await self.start()
        # the watermark never passes this reader's clock: a write dated ahead of it (a writer
        # whose clock runs ahead) would drag it past the other writers' next writes, which no
        # pass would read again; such a write is read by every pass until the clock catches
        # up (the applied memory skips it). After a stall, nor the stall's start (_stalls).
        horizon = now_ms()
        low = min((cp.ts or EPOCH for cp in self.checkpoints.values()), default=EPOCH)
        overlap = timedelta(seconds=self.settings.sync_overlap_seconds)
        held = self.stalls.begin(horizon, overlap, self.partitions)
        if held is not None:
            low, horizon = min(low, held), min(horizon, held)
        async with self._window(low - overlap) as docs:
            yield self._batches(docs, horizon)

    async def _batches(
        self, batches: AsyncIterator[list[dict[str, Any]]], horizon: datetime
    ) -> AsyncIterator[ChangeBatch]:
        reached: datetime | None = None
        async for docs in batches:
            for doc in docs:
                u = doc.get("updated_at")
                if isinstance(u, datetime) and u.astimezone(UTC) <= horizon:
                    reached = max(reached or EPOCH, u.astimezone(UTC))
            mine = [d for d in docs if self.mine(d.get("_id"))]
            yield ChangeBatch(docs=mine, checkpoint={"ts": reached})

    async def commit(self, batch: ChangeBatch) -> None:
        ts = batch.checkpoint.get("ts")
        if isinstance(ts, datetime):
            for cp in self.checkpoints.values():
                if cp.ts is None or ts > cp.ts:
                    cp.ts = ts
        await self._save()


class ChangeStreamFeed(_Partitioned):
    name = "change_stream"

    # server codes meaning the resume point is gone
    LOST = frozenset({136, 260, 280, 286})

    def __init__(
        self,
        settings: Settings,
        db: Any,
        partitions: Sequence[int] | None = None,
        owner: str = "",
    ) -> None:
        super().__init__(settings, db, partitions, owner)
        self._stream: Any = None
        self._replay: Floor | None = None

    async def start(self) -> None:
        if self._stream is None:
            await self._open()
        else:
            self.floor = await load_floor(self.db, self.settings)
        floor = self.floor
        stale = [cp for cp in self.checkpoints.values() if floor and cp.floor_index != floor.index]
        self._replay = floor if stale else None
        self.rewound = bool(stale)

    async def _open(self) -> None:
        await self._load()
        lost = [p for p, cp in self.checkpoints.items() if cp.token is None]
        if lost:
            raise SyncGap(
                f"no change-stream resume token for partitions {lost}: run `opendisco "
                "reindex` (it records one before reading) instead of starting from now"
            )
        token = min((cp.token for cp in self.checkpoints.values()), key=_order)
        with backend_errors("opening change stream failed"):
            try:
                self._stream = await self.coll.watch(
                    full_document="updateLookup", resume_after=token
                )
            except OperationFailure as exc:
                if exc.code in self.LOST or "resume" in str(exc).lower():
                    await self._alert(str(exc))
                    raise SyncGap(f"change-stream history lost ({exc}); run a reindex") from exc
                raise

    async def _alert(self, reason: str) -> None:
        key = state_key(self.settings, self.name)
        logging.getLogger("opendisco.ingest").error("SYNC GAP %s: %s", key, reason)
        await save_state(self.db, key, {"alert": reason, "alert_at": now_ms()})

    @asynccontextmanager
    async def batches(self) -> AsyncIterator[AsyncIterator[ChangeBatch]]:
        await self.start()
        yield self._batches()

    async def _batches(self) -> AsyncIterator[ChangeBatch]:
        if self._replay is not None:  # the index changed: replay the floor's window first
            floor = self._replay
            overlap = timedelta(seconds=self.settings.sync_overlap_seconds)
            async with self._window(floor.ts - overlap) as batches:
                async for docs in batches:
                    yield ChangeBatch(docs=[d for d in docs if self.mine(d.get("_id"))])
            yield ChangeBatch(checkpoint={"floor_index": floor.index})
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            yield batch

    async def _next_batch(self) -> ChangeBatch | None:
        batch, events = ChangeBatch(), 0
        with backend_errors("change stream failed"):
            try:
                while events < self.settings.sync_batch_size:
                    event = await self._stream.try_next()
                    if event is None:
                        break
                    events += 1
                    try:
                        self._route(event, batch)
                    except SyncGap as exc:
                        await self._alert(str(exc))
                        raise
            except OperationFailure as exc:
                if exc.code in self.LOST:
                    await self._alert(str(exc))
                    raise SyncGap(f"change-stream history lost ({exc}); run a reindex") from exc
                raise
        batch.checkpoint = {"token": self._stream.resume_token}
        return batch if events else None

    def _route(self, event: dict[str, Any], batch: ChangeBatch) -> None:
        op = event.get("operationType")
        if op in ("drop", "rename", "dropDatabase", "invalidate"):
            raise SyncGap(f"change stream invalidated by {op}; run a reindex")
        key = (event.get("documentKey") or {}).get("_id")
        if key is None or not self.mine(key):
            return
        cp = self.checkpoints[partition_of(key, self.settings.sync_partitions)]
        if _order(event.get("_id")) <= _order(cp.token):
            return  # this partition applied it already (resumed from an older token)
        if op in ("insert", "update", "replace"):
            doc = event.get("fullDocument")
            if doc is not None:  # None: deleted since; a later delete event follows
                batch.docs.append(doc)
        elif op == "delete" and indexable_id(key):
            # only a string id can be in the index: str() of 424242 or of an ObjectId would
            # name another document ("424242"), which the delete would remove
            batch.hard_deletes.append(HardDelete(key))

    async def commit(self, batch: ChangeBatch) -> None:
        token, floor = batch.checkpoint.get("token"), batch.checkpoint.get("floor_index")
        for cp in self.checkpoints.values():
            if token is not None and _order(token) > _order(cp.token):
                cp.token = token
            if floor is not None:
                cp.floor_index = floor
        if token is not None or floor is not None:
            await self._save()

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None


async def detect_mode(settings: Settings, db: Any) -> str:
    """``change_stream`` on a replica set that is not FerretDB, else ``polling``."""
    if settings.sync_mode != "auto":
        return settings.sync_mode
    return "change_stream" if (await detect_capabilities(db)).change_streams else "polling"


async def open_feed(
    settings: Settings,
    db: Any,
    mode: str | None = None,
    *,
    partitions: Sequence[int] | None = None,
    owner: str = "",
    stalls: Stalls | None = None,
) -> ChangeFeed:
    mode = mode or await detect_mode(settings, db)
    if mode == "change_stream":
        return ChangeStreamFeed(settings, db, partitions, owner)
    return PollingFeed(settings, db, partitions, owner, stalls)


async def seed_resume_token(settings: Settings, db: Any) -> bool:
    """Record a change-stream position before a rebuild reads (no-op without change streams);
    partitions without a token of their own start from it."""
    if await detect_mode(settings, db) != "change_stream":
        return False
    key = state_key(settings, "change_stream")
    state = await load_state(db, key)
    if state and state.get("token") is not None:
        return False
    async with await items_collection(db, settings).watch() as stream_:
        await stream_.try_next()
        token = stream_.resume_token
    await save_state(db, key, {"mode": "change_stream", "token": token})
    return True
