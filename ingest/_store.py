"""MongoDB side of ingest: codec for reading items, ``dead_letters`` and ``sync_state``.

``dead_letters``: ``{_id, source, stage, doc_id, version, reason, doc, at}``; the ``_id`` is a
hash of (source, doc id, version, reason) so re-reading the same bad document (overlap
windows, restarts) records it once.
``sync_state``: one document per (alias, collection, feed kind) holding its checkpoint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any

from bson import DatetimeMS
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco._store import MAX_WRITES_PER_COMMAND, now_ms

__all__ = [
    "DEAD_LETTERS",
    "SYNC_STATE",
    "dead_letter",
    "items_collection",
    "load_state",
    "save_state",
    "state_key",
    "stream",
    "write_dead_letters",
]

DEAD_LETTERS = "dead_letters"
SYNC_STATE = "sync_state"


def items_collection(db: Any, settings: Settings) -> Any:
    """The items collection with a codec that never fails on out-of-range dates."""
    opts = CodecOptions(
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


def _storable(value: Any, depth: int = 0) -> Any:
    """A copy any MongoDB-protocol server stores (FerretDB refuses NaN/Inf and drops the link)."""
    if depth > 40:
        return repr(value)[:1000]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, DatetimeMS):  # out-of-range date: default codecs cannot read it back
        return f"DatetimeMS({int(value)})"
    if isinstance(value, Mapping):
        return {str(k): _storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v, depth + 1) for v in value]
    return value


def dead_letter(
    source: str, stage: str, doc: Mapping[str, Any], reason: str, version: Any = None
) -> dict[str, Any]:
    """A ``dead_letters`` record. ``doc_id`` keeps the document's ``_id`` as stored, with its
    BSON type (``424242`` and ``"424242"`` are two documents, so two records)."""
    doc_id = doc.get("_id") if isinstance(doc, Mapping) else None
    if version is None and isinstance(doc, Mapping):
        version = doc.get("version")
    typed_id = f"{type(doc_id).__name__}:{doc_id!r}"
    key = hashlib.sha256(f"{source}\x00{typed_id}\x00{version!r}\x00{reason}".encode()).hexdigest()
    return {
        "_id": key[:32],
        "source": source,
        "stage": stage,
        "doc_id": _storable(doc_id),
        "version": version if isinstance(version, int) and not isinstance(version, bool) else None,
        "reason": reason[:2000],
        "doc": _storable(doc) if isinstance(doc, Mapping) else {"value": repr(doc)[:1000]},
        "at": now_ms(),
    }


async def write_dead_letters(db: Any, letters: list[dict[str, Any]]) -> int:
    if not letters:
        return 0
    ops = []
    for letter in letters:
        body = {k: v for k, v in letter.items() if k not in ("_id", "at") and v is not None}
        # FerretDB drops a null set by $setOnInsert: null fields go through $set (the same
        # null on every write), so every record has doc_id and version
        nulls = {k: None for k, v in letter.items() if v is None}
        ops.append(
            UpdateOne(
                {"_id": letter["_id"]},
                {"$setOnInsert": body, "$set": {**nulls, "at": letter["at"]}},
                upsert=True,
            )
        )
    for start in range(0, len(ops), MAX_WRITES_PER_COMMAND):
        await _write_letters(db, ops[start : start + MAX_WRITES_PER_COMMAND], letters[start:])
    return len(letters)


async def _write_letters(db: Any, ops: list[Any], letters: list[dict[str, Any]]) -> None:
    with backend_errors("writing dead letters failed"):
        try:
            await db[DEAD_LETTERS].bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            # a document Mongo cannot store back (e.g. too deep): keep id and reason at least
            for i in [e["index"] for e in exc.details.get("writeErrors", [])]:
                slim = {k: v for k, v in letters[i].items() if k != "doc"}
                slim["doc"] = {"_id": slim["doc_id"], "unstorable": True}
                await db[DEAD_LETTERS].replace_one({"_id": slim["_id"]}, slim, upsert=True)


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
