"""The events' MongoDB collections and indexes, created before any write touches them.

FerretDB 1.x (SQLite) can deadlock when a collection is created implicitly while other writes
are in flight; so every collection the events path writes is created here, one at a time,
under one lock per event loop. Where the server has no TTL indexes (FerretDB 1.x) ``events.ts``
gets a plain index and ``EventProcessor.purge_expired`` stands in.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from opendisco._backend import backend_errors
from opendisco._store import create_collection, detect_capabilities

from ._blocks import MEMBER_BLOCK_LOCKS, MEMBER_BLOCKS
from ._claims import CLAIMS
from ._graph import ITEM_EDGES, ITEM_LOCKS
from ._inbound import INBOUND, INBOUND_LOCKS, ensure_inbound_indexes
from ._members import INBOX_LOCKS, USER_INBOX, USER_LIKES, USER_MATCHES, ensure_member_indexes
from ._pacing import PACING, PACING_LOCKS
from ._user_state import MEMBER_TASTES, USER_LOCKS, USER_STATE

__all__ = ["EVENTS", "ensure_events_store"]

EVENTS = "events"
#: every collection an event batch writes
COLLECTIONS = (
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
    INBOUND_LOCKS,
    PACING,
    PACING_LOCKS,
    MEMBER_BLOCKS,
    MEMBER_BLOCK_LOCKS,
)
_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock() -> asyncio.Lock:
    """One lock per event loop (an asyncio.Lock is bound to the loop that first uses it)."""
    loop = asyncio.get_running_loop()
    lock = _LOCKS.get(loop)
    if lock is None:
        lock = _LOCKS[loop] = asyncio.Lock()
    return lock


async def ensure_events_store(db: Any, ttl_days: float) -> bool:
    """Create the missing collections of :data:`COLLECTIONS` and the events' indexes (TTL on
    ``ts`` after ``ttl_days`` where the server has TTL indexes); returns whether it has."""
    async with _lock():
        with backend_errors("events collections"):
            have = set(await db.list_collection_names())
            for name in COLLECTIONS:
                if name not in have:
                    await create_collection(db, name)
        native_ttl = (await detect_capabilities(db)).ttl_indexes
        events = db[EVENTS]
        with backend_errors("events index creation failed"):
            if native_ttl:
                await events.create_index(
                    "ts", expireAfterSeconds=int(ttl_days * 86400), name="ttl_ts"
                )
            else:
                await events.create_index("ts", name="ts")
            await events.create_index("user_id")
            await events.create_index("type")
            await events.create_index("applied")
            # the recovery sweep's repair finds the few states marked vectors_stale, and those
            # folded from another behaviour model than the served one (``$ne``: not sparse)
            await db[USER_STATE].create_index("vectors_stale", sparse=True)
            await db[USER_STATE].create_index("behaviour_model")
            await db[MEMBER_TASTES].create_index("at")  # the processes' copies (_taste_copy)
        await ensure_inbound_indexes(db)
        await ensure_member_indexes(db)
    return native_ttl
