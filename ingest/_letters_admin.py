"""What operators do with the dead letters (:mod:`._letters`): count the open ones, list the
newest records, and delete the resolved ones past their retention (``dead_letter_days``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco._store import now_ms

from ._letters import DEAD_LETTERS, records_of

__all__ = ["count_open", "list_letters", "purge_letters", "purge_resolved", "read_letters"]


async def count_open(db: Any, collection: str) -> int:
    with backend_errors("counting dead letters failed"):
        query = {**records_of(collection), "resolved_at": None}
        return int(await db[DEAD_LETTERS].count_documents(query))


async def list_letters(
    db: Any, collection: str, *, resolved: bool = False, limit: int = 20
) -> list[dict[str, Any]]:
    """The newest records (open only unless ``resolved``), without the refused document."""
    query = records_of(collection) if resolved else {**records_of(collection), "resolved_at": None}
    with backend_errors("reading dead letters failed"):
        cursor = db[DEAD_LETTERS].find(query, {"doc": 0}).sort("at", -1).limit(limit)
        return [rec async for rec in cursor]


async def purge_resolved(
    db: Any, collection: str, days: float, *, now: datetime | None = None
) -> int:
    """Delete the records of ``collection`` (and older unnamed ones) resolved more than
    ``days`` before ``now``; open records are kept whatever their age. Returns how many."""
    cutoff = (now or now_ms()) - timedelta(days=days)
    with backend_errors("purging dead letters failed"):
        query = {**records_of(collection), "resolved_at": {"$lt": cutoff}}
        return int((await db[DEAD_LETTERS].delete_many(query)).deleted_count)


async def read_letters(
    settings: Settings, *, resolved: bool = False, limit: int = 20
) -> tuple[list[dict[str, Any]], int]:
    """:func:`list_letters` of ``settings``' items collection and its open records' count."""
    mongo = clients.mongo_async(settings)
    try:
        db = mongo[settings.mongo_db]
        collection = settings.items_collection
        return await list_letters(db, collection, resolved=resolved, limit=limit), await count_open(
            db, collection
        )
    finally:
        await mongo.close()


async def purge_letters(settings: Settings) -> int:
    """:func:`purge_resolved` of ``settings``' items collection after ``dead_letter_days``."""
    mongo = clients.mongo_async(settings)
    try:
        db = mongo[settings.mongo_db]
        return await purge_resolved(db, settings.items_collection, settings.dead_letter_days)
    finally:
        await mongo.close()
