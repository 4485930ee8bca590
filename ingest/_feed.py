"""One change-feed protocol, two implementations.

``ChangeFeed.next_batch()`` returns the next :class:`ChangeBatch` (or ``None`` when caught
up); ``commit(batch)`` persists its checkpoint in ``sync_state`` and is called by sync only
after every change of the batch was acknowledged by OpenSearch (or dead-lettered).

* :class:`ChangeStreamFeed` — MongoDB replica-set change streams (``updateLookup``); the
  resume token is the checkpoint. Lost history (the token fell off the oplog) raises
  :class:`SyncGap` and records an alert: it never restarts silently from "now".
* :class:`PollingFeed` — ``(updated_at, _id)`` watermark polling for servers without change
  streams (FerretDB). Each cycle re-reads ``sync_overlap_seconds`` before the watermark, so a
  writer whose ``updated_at`` lags its commit is still seen; deletes are tombstones
  (``deleted: true``), which the apply step turns into external-versioned deletes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pymongo.errors import OperationFailure

from opendisco._backend import backend_errors
from opendisco._exceptions import SyncGap
from opendisco._settings import Settings
from opendisco._store import detect_capabilities, now_ms

from ._store import items_collection, load_state, save_state, state_key

__all__ = [
    "EPOCH",
    "ChangeBatch",
    "ChangeFeed",
    "ChangeStreamFeed",
    "HardDelete",
    "PollingFeed",
    "detect_mode",
    "open_feed",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class HardDelete:
    """A document removed from MongoDB (change streams only); its version is unknown."""

    id: str


@dataclass
class ChangeBatch:
    docs: list[dict[str, Any]] = field(default_factory=list)  # full documents (tombstones too)
    hard_deletes: list[HardDelete] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.docs) + len(self.hard_deletes)


class ChangeFeed(Protocol):
    name: str

    async def start(self) -> None: ...

    async def next_batch(self) -> ChangeBatch | None: ...

    async def commit(self, batch: ChangeBatch) -> None: ...

    async def close(self) -> None: ...


class PollingFeed:
    name = "polling"

    def __init__(self, settings: Settings, db: Any) -> None:
        self.settings = settings
        self.db = db
        self.coll = items_collection(db, settings)
        self.key = state_key(settings, "polling")
        self.watermark: datetime = EPOCH
        self._cursor: tuple[datetime, str] | None = None
        self._exhausted = False

    async def start(self) -> None:
        state = await load_state(self.db, self.key)
        if state and isinstance(state.get("ts"), datetime):
            self.watermark = state["ts"].astimezone(UTC)
        overlap = timedelta(seconds=self.settings.sync_overlap_seconds)
        start = max(EPOCH, self.watermark - overlap)
        self._cursor = (start, "")
        self._exhausted = False

    async def next_batch(self) -> ChangeBatch | None:
        if self._cursor is None:
            await self.start()
        if self._exhausted:
            return None
        assert self._cursor is not None
        ts, last_id = self._cursor
        query = {
            "$or": [
                {"updated_at": {"$gt": ts}},
                {"updated_at": ts, "_id": {"$gt": last_id}},
            ]
        }
        limit = self.settings.sync_batch_size
        with backend_errors(f"polling {self.coll.name} failed"):
            # .limit() (not only to_list(limit)): the server then closes the cursor; an
            # abandoned open cursor pins a FerretDB/SQLite connection until the pool runs dry
            cursor = self.coll.find(query).sort([("updated_at", 1), ("_id", 1)]).limit(limit)
            docs = await cursor.to_list(limit)
        if len(docs) < limit:
            self._exhausted = True
        if not docs:
            return None
        horizon = now_ms() + MAX_CLOCK_SKEW
        watermark = self.watermark
        for doc in docs:
            u = doc.get("updated_at")
            if isinstance(u, datetime) and u.astimezone(UTC) <= horizon:
                # a future-dated updated_at must never drag the watermark past real writes
                watermark = max(watermark, u.astimezone(UTC))
        last = docs[-1]
        last_ts = last.get("updated_at")
        if isinstance(last_ts, datetime):
            self._cursor = (last_ts.astimezone(UTC), str(last["_id"]))
        else:
            self._exhausted = True
        return ChangeBatch(docs=docs, checkpoint={"ts": watermark})

    async def commit(self, batch: ChangeBatch) -> None:
        ts = batch.checkpoint.get("ts")
        if isinstance(ts, datetime) and ts > self.watermark:
            self.watermark = ts
        await save_state(self.db, self.key, {"mode": self.name, "ts": self.watermark})

    async def close(self) -> None:
        self._cursor = None


class ChangeStreamFeed:
    name = "change_stream"

    # server codes meaning the resume point is gone
    LOST = frozenset({136, 260, 280, 286})

    def __init__(self, settings: Settings, db: Any) -> None:
        self.settings = settings
        self.db = db
        self.coll = items_collection(db, settings)
        self.key = state_key(settings, "change_stream")
        self._stream: Any = None

    async def start(self) -> None:
        if self._stream is not None:
            return
        state = await load_state(self.db, self.key)
        token = state.get("token") if state else None
        if token is None:
            raise SyncGap(
                f"no change-stream resume token for {self.key}: run `opendisco reindex` "
                "(it records one before reading) instead of starting from now"
            )
        with backend_errors("opening change stream failed"):
            try:
                self._stream = self.coll.watch(full_document="updateLookup", resume_after=token)
            except OperationFailure as exc:
                if exc.code in self.LOST or "resume" in str(exc).lower():
                    await self._alert(str(exc))
                    raise SyncGap(f"change-stream history lost ({exc}); run a reindex") from exc
                raise

    async def _alert(self, reason: str) -> None:
        logging.getLogger("opendisco.ingest").error("SYNC GAP %s: %s", self.key, reason)
        await save_state(self.db, self.key, {"alert": reason, "alert_at": now_ms()})

    async def next_batch(self) -> ChangeBatch | None:
        await self.start()
        batch = ChangeBatch()
        with backend_errors("change stream failed"):
            try:
                while len(batch) < self.settings.sync_batch_size:
                    event = await self._stream.try_next()
                    if event is None:
                        break
                    op = event.get("operationType")
                    if op in ("insert", "update", "replace"):
                        doc = event.get("fullDocument")
                        if doc is None:  # deleted since; a later delete event follows
                            continue
                        batch.docs.append(doc)
                    elif op == "delete":
                        batch.hard_deletes.append(HardDelete(str(event["documentKey"]["_id"])))
                    elif op in ("drop", "rename", "dropDatabase", "invalidate"):
                        await self._alert(f"collection event {op}")
                        raise SyncGap(f"change stream invalidated by {op}; run a reindex")
            except OperationFailure as exc:
                if exc.code in self.LOST:
                    await self._alert(str(exc))
                    raise SyncGap(f"change-stream history lost ({exc}); run a reindex") from exc
                raise
        batch.checkpoint = {"token": self._stream.resume_token}
        return batch if len(batch) else None

    async def commit(self, batch: ChangeBatch) -> None:
        token = batch.checkpoint.get("token")
        if token is not None:
            await save_state(self.db, self.key, {"mode": self.name, "token": token})

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None


async def detect_mode(settings: Settings, db: Any) -> str:
    """``change_stream`` on a replica set that is not FerretDB, else ``polling``."""
    if settings.sync_mode != "auto":
        return settings.sync_mode
    return "change_stream" if (await detect_capabilities(db)).change_streams else "polling"


async def open_feed(settings: Settings, db: Any, mode: str | None = None) -> ChangeFeed:
    mode = mode or await detect_mode(settings, db)
    feed: ChangeFeed = (
        ChangeStreamFeed(settings, db) if mode == "change_stream" else PollingFeed(settings, db)
    )
    await feed.start()
    return feed


async def seed_resume_token(settings: Settings, db: Any) -> bool:
    """Record a change-stream position before a rebuild reads (no-op without change streams)."""
    if await detect_mode(settings, db) != "change_stream":
        return False
    key = state_key(settings, "change_stream")
    state = await load_state(db, key)
    if state and state.get("token") is not None:
        return False
    async with items_collection(db, settings).watch() as stream:
        await stream.try_next()
        token = stream.resume_token
    await save_state(db, key, {"mode": "change_stream", "token": token})
    return True
