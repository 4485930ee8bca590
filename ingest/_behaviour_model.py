"""Which trained model's behaviour vectors are served, and publishing a new one whole.

Vectors of two ALS models side by side are meaningless to compare (each model has its own
latent axes), so a model is published whole (:class:`opendisco._published.Generations`):
``opendisco train`` writes every vector of the new model into a collection of its own,
``<behaviour>__<version>``, then switches the pointer document (``<behaviour>_model``: ``{_id:
"current", collection, previous, version, published_at, vectors, left_out}``) to it with one
single-document write. Every reader (:func:`served_collection`: the engine-document builds,
the sync feed, the reindex refresh) follows the pointer; with none (a database from before),
the unversioned ``<behaviour>`` collection is served. A killed run leaves the previous model
served whole; publishes are one at a time (a lease in ``<behaviour>_locks``).

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
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from opendisco._backend import backend_errors
from opendisco._published import Generations, behaviour_models
from opendisco._settings import Settings
from opendisco._store import bulk_write_chunked, now_ms
from opendisco._stored import store_vector

from ._store import items_collection

__all__ = [
    "Published",
    "publish_behaviour",
    "served_collection",
    "served_model",
    "store_vectors",
]

CHUNK = 1000


@dataclass(frozen=True)
class Published:
    version: str
    collection: str
    written: int


def _generations(db: Any, settings: Settings) -> Generations:
    """The behaviour models, read with the same codec as the items (UTC dates)."""
    return behaviour_models(db, settings, items_collection(db, settings).codec_options)


async def served_collection(db: Any, settings: Settings) -> Any:
    """The collection of the model served now (the pointer's, else ``<behaviour>``)."""
    return await _generations(db, settings).served()


async def served_model(db: Any, settings: Settings) -> tuple[Any, datetime | None]:
    """The collection of the model served now and the ``updated_at`` of all its vectors
    (None: no model published, the unversioned collection)."""
    gens = _generations(db, settings)
    current = await gens.current()
    stamp = current.get("published_at")
    if isinstance(stamp, datetime):
        stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    else:
        stamp = None
    return gens.named(current["collection"]), stamp


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


async def _left_out(db: Any, served: str, vectors: Mapping[str, Any]) -> list[str]:
    """The items with a vector in the ``served`` model and none in ``vectors``."""
    coll = db[served]
    with backend_errors(f"reading {coll.name} failed"):
        had = await coll.find({"behaviour": {"$ne": None}}, projection={"_id": 1}).to_list(None)
    return [d["_id"] for d in had if d["_id"] not in vectors]


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
    gens = _generations(db, settings)
    async with gens.publishing(lease_s=lease_s, wait_s=wait_s, what="behaviour publish"):
        stamp = now_ms()
        draft = await gens.begin(f"als-{stamp:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")
        coll = draft.coll
        with backend_errors(f"indexing {coll.name} failed"):
            await coll.create_index("updated_at")  # the feed polls by it
        docs = [_doc(i, v, stamp) for i, v in vectors.items()]
        written = await gens.write(draft, docs, chunk=CHUNK, progress=progress)
        dropped = await _left_out(db, draft.current["collection"], vectors)
        marks = [{"_id": i, "behaviour": None, "updated_at": stamp} for i in dropped]
        await gens.write(draft, marks, chunk=CHUNK)
        await gens.commit(
            draft,
            documents=written + len(dropped),
            published_at=stamp,
            vectors=written,
            left_out=len(dropped),
        )
    return Published(version=draft.version, collection=coll.name, written=written)
