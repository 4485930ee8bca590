"""Which trained model's behaviour vectors are served, and publishing a new one whole.

Vectors of two ALS models side by side are meaningless to compare (each model has its own
latent axes), so a model is published in one step: ``opendisco train`` writes every vector of
the new model into a collection of its own, ``<behaviour>__<version>``, then switches the
pointer document (``<behaviour>_model``: ``{_id: "current", collection, previous, version,
published_at, vectors}``) to it with one single-document write. Every reader
(:func:`served_collection`: the engine-document builds, the sync feed, the reindex refresh)
follows the pointer; with none (a database from before), the unversioned ``<behaviour>``
collection is served.

A run killed before the switch leaves the previous model served whole; its partial collection
is dropped by the next publish. Publishes are one at a time (a lease in ``<behaviour>_locks``,
renewed while held, taken over at once from a killed holder): a second trainer waits, then
publishes its own model whole in turn. The previous model's collection is kept after a switch
(a reader that resolved the pointer just before still reads it) and dropped by the next
publish.

All of a model's vectors are stamped with one ``updated_at``, the time its publish took the
lease: later than every vector of the model it replaces, so the sync feed (an ``updated_at``
watermark) sends every item again with its new vector once the pointer moves. An item the
replaced model had a vector for and the new one has not (no positives left in the new data)
gets a mark ``{_id, behaviour: None, updated_at}``: the feed sends it again without a vector
(the old model's, beside the new model's, would mean nothing).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from opendisco._backend import backend_errors
from opendisco._exceptions import StoreBackendError
from opendisco._settings import Settings
from opendisco._store import bulk_write_chunked, lease, now_ms
from opendisco._stored import store_vector

from ._store import items_collection

__all__ = ["Published", "publish_behaviour", "served_collection", "store_vectors"]

#: the pointer document's ``_id``
CURRENT = "current"
#: the one lease a publish holds
PUBLISH_LOCK = "publish"
CHUNK = 1000


@dataclass(frozen=True)
class Published:
    version: str
    collection: str
    written: int


def _pointer(db: Any, settings: Settings) -> Any:
    return db[f"{settings.behaviour_collection}_model"]


def _generation(settings: Settings, version: str) -> str:
    return f"{settings.behaviour_collection}__{version}"


def _collection(db: Any, settings: Settings, name: str) -> Any:
    """``name`` read with the same codec as the items (UTC dates)."""
    return db.get_collection(name, codec_options=items_collection(db, settings).codec_options)


async def _current(db: Any, settings: Settings) -> dict[str, Any]:
    pointer = _pointer(db, settings)
    with backend_errors(f"reading {pointer.name} failed"):
        doc = await pointer.find_one({"_id": CURRENT})
    return doc or {"collection": settings.behaviour_collection}


async def served_collection(db: Any, settings: Settings) -> Any:
    """The collection of the model served now (the pointer's, else ``<behaviour>``)."""
    return _collection(db, settings, (await _current(db, settings))["collection"])


def _doc(item: str, vector: Sequence[float], stamp: datetime) -> dict[str, Any]:
    return {"_id": item, "behaviour": store_vector(vector), "updated_at": stamp}


async def store_vectors(coll: Any, vectors: Mapping[str, Sequence[float]], stamp: datetime) -> int:
    """Upsert ``item id → vector`` into ``coll`` (a BSON float32 vector: FerretDB reads it
    ~30% cheaper than an array of doubles), all stamped ``stamp``. Returns the number of
    vectors written (new or changed)."""
    with backend_errors(f"indexing {coll.name} failed"):
        await coll.create_index("updated_at")  # the feed polls by it (no-op once it exists)
    ops = [
        UpdateOne(
            {"_id": i}, {"$set": {"behaviour": store_vector(v), "updated_at": stamp}}, upsert=True
        )
        for i, v in vectors.items()
    ]
    return await bulk_write_chunked(coll, ops)


async def _drop_all_but(db: Any, settings: Settings, keep: set[str]) -> list[str]:
    """Drop every model collection (``<behaviour>`` and ``<behaviour>__*``) not in ``keep``."""
    base = settings.behaviour_collection
    with backend_errors(f"listing {base} models failed"):
        names = await db.list_collection_names()
    gone = [n for n in names if (n == base or n.startswith(f"{base}__")) and n not in keep]
    for name in gone:
        with backend_errors(f"dropping {name} failed"):
            await db.drop_collection(name)
    return gone


async def _left_out(
    db: Any, settings: Settings, served: str, vectors: Mapping[str, Any]
) -> list[str]:
    """The items with a vector in the ``served`` model and none in ``vectors``."""
    coll = db[served]
    with backend_errors(f"reading {coll.name} failed"):
        had = await coll.find({"behaviour": {"$ne": None}}, projection={"_id": 1}).to_list(None)
    return [d["_id"] for d in had if d["_id"] not in vectors]


async def _switch(
    db: Any, settings: Settings, current: Mapping[str, Any], doc: Mapping[str, Any]
) -> None:
    """Point the readers at ``doc["collection"]``, if all its vectors are there and the
    pointer still names ``current``: a publish whose lease lapsed (paused longer than
    ``lease_s``) finds its collection dropped or the pointer moved by the publish that took
    over, and switches to nothing (:class:`StoreBackendError`; the model served stays)."""
    coll = db[doc["collection"]]
    with backend_errors(f"counting {coll.name} failed"):
        have = await coll.count_documents({})
    if have != doc["vectors"] + doc["left_out"]:
        raise StoreBackendError(
            f"{coll.name}: {have} of its {doc['vectors']} vectors are there (its publish lost "
            "its lease, and another dropped it); the served model did not change"
        )
    pointer = _pointer(db, settings)
    with backend_errors(f"switching {pointer.name} failed"):
        if "_id" in current:  # the pointer read: replaced only if it still names that
            res = await pointer.replace_one({"_id": CURRENT, "version": current["version"]}, doc)
            switched = res.matched_count == 1
        else:  # none yet (the unversioned collection served): the first pointer
            try:
                await pointer.insert_one({"_id": CURRENT, **doc})
                switched = True
            except DuplicateKeyError:
                switched = False
    if not switched:
        raise StoreBackendError(
            f"{pointer.name}: another publish switched the model while {doc['version']} was "
            "written (its lease lapsed); that one stays served"
        )


async def publish_behaviour(
    db: Any,
    settings: Settings,
    vectors: Mapping[str, Sequence[float]],
    *,
    lease_s: float = 30.0,
    wait_s: float = 900.0,
    progress: Callable[[int], None] | None = None,
) -> Published:
    """Publish ``vectors`` (item id → vector) as the served model, whole (see the module
    doc); ``progress`` is given the count of each chunk written."""
    locks = db[f"{settings.behaviour_collection}_locks"]
    held = lease(locks, [PUBLISH_LOCK], lease_s=lease_s, wait_s=wait_s, what="behaviour publish")
    async with held:
        stamp = now_ms()
        version = f"als-{stamp:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        current = await _current(db, settings)
        # what a killed publish left (no other publish is writing: we hold the lease)
        await _drop_all_but(db, settings, {current["collection"], current.get("previous", "")})
        coll = _collection(db, settings, _generation(settings, version))
        with backend_errors(f"writing {coll.name} failed"):
            await coll.create_index("updated_at")  # the feed polls by it
            ids = list(vectors)
            written = 0
            for k in range(0, len(ids), CHUNK):
                # a new collection: inserts (FerretDB upserts one by one, ~15x slower)
                docs = [_doc(i, vectors[i], stamp) for i in ids[k : k + CHUNK]]
                written += len((await coll.insert_many(docs, ordered=False)).inserted_ids)
                if progress is not None:
                    progress(len(docs))
            dropped = await _left_out(db, settings, current["collection"], vectors)
            for k in range(0, len(dropped), CHUNK):
                marks = [
                    {"_id": i, "behaviour": None, "updated_at": stamp}
                    for i in dropped[k : k + CHUNK]
                ]
                await coll.insert_many(marks, ordered=False)
        doc = {
            "collection": coll.name,
            "previous": current["collection"],
            "version": version,
            "published_at": stamp,
            "vectors": written,
            "left_out": len(dropped),
        }
        await _switch(db, settings, current, doc)
        await _drop_all_but(db, settings, {coll.name, current["collection"]})
    return Published(version=version, collection=coll.name, written=written)
