"""MongoDB side of ingest: codec for reading items, and ``sync_state``
(``dead_letters``: ``_letters``).

``sync_state``: one document per (alias, collection, feed kind) holding its checkpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any

from bson.codec_options import DatetimeConversion

from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco._store import now_ms

__all__ = [
    "SYNC_STATE",
    "items_collection",
    "load_state",
    "save_state",
    "state_key",
    "stream",
]

SYNC_STATE = "sync_state"


def items_collection(db: Any, settings: Settings) -> Any:
    """The items collection with a codec that never fails on out-of-range dates; the rest
    of the client's codec is kept (strings that are not UTF-8 read with U+FFFD: a fresh
    ``CodecOptions`` was strict, and such a document failed every read of its batch)."""
    opts = db.codec_options.with_options(
        tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO
    )
    return db.get_collection(settings.items_collection, codec_options=opts)


@asynccontextmanager
async def stream(
    coll: Any,
    query: Mapping[str, Any],
    batch_size: int,
    *,
    sort: list[tuple[str, int]] | None = None,
    projection: Mapping[str, Any] | None = None,
) -> AsyncIterator[AsyncIterator[list[dict[str, Any]]]]:
    """One cursor over ``query``, read as lists of up to ``batch_size`` documents.

    ``async with stream(...) as batches: async for batch in batches: ...`` — the collection
    is read once (no keyset re-queries: FerretDB scans the whole collection per query), and
    the cursor is closed when the block ends, however it ends: an abandoned cursor pins a
    FerretDB/SQLite connection until its pool runs dry.
    """
    cursor = coll.find(query, projection, batch_size=batch_size)
    if sort:
        cursor = cursor.sort(sort)

    async def batches() -> AsyncIterator[list[dict[str, Any]]]:
        while True:
            with backend_errors(f"reading {coll.name} failed"):
                docs = await cursor.to_list(batch_size)
            if not docs:
                return
            yield docs

    try:
        yield batches()
    finally:
        await cursor.close()


def state_key(settings: Settings, kind: str) -> str:
    return f"{settings.index_alias}:{settings.items_collection}:{kind}"


async def load_state(db: Any, key: str) -> dict[str, Any] | None:
    with backend_errors("reading sync state failed"):
        return await db[SYNC_STATE].find_one({"_id": key})


async def save_state(db: Any, key: str, fields: Mapping[str, Any]) -> None:
    with backend_errors("saving sync state failed"):
        await db[SYNC_STATE].update_one(
            {"_id": key}, {"$set": {**fields, "saved_at": now_ms()}}, upsert=True
        )
