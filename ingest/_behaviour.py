"""Trained behaviour vectors: a collection of our own, joined into every engine document.

The items collection belongs to the application (it writes ``available``, ``deleted``, the
profile fields, ``version``). ``opendisco train`` writes the ALS item factors into
``settings.behaviour_collection`` (one collection per model, published whole:
:mod:`._behaviour_model`) instead — ``{_id: <item id>, behaviour: <BSON float32
vector>, updated_at}`` — and never touches an item: on FerretDB 1.x an update rewrites the
whole document, so a batch job updating items loses the application's concurrent writes
(a member marked unavailable came back), and a batch job has no business bumping the
application's ``version`` and ``updated_at`` anyway.

Every path that builds an engine document from items reads their vectors here first
(:func:`join_behaviour`: one ``_id $in`` read per batch, which FerretDB pushes down); the
stored vector wins over a ``behaviour`` field an item still carries from before (older
databases keep working). Sync carries new vectors into the engine with a second polling
feed over this collection (:class:`BehaviourFeed`, checkpointed per partition like the
items feed, under its own kind): each changed vector's item is read and sent again at its
*current* version with ``external_gte`` (:func:`prepare_refresh`), since the item itself did
not change. A crash after ``train`` wrote vectors and before the engine got them leaves the
feed's checkpoint behind those vectors, so the next pass sends them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco._store import now_ms

from ._apply import Prepared, prepare
from ._behaviour_model import served_collection, served_model, store_vectors
from ._embed import Embedder
from ._feed import PollingFeed
from ._schema import vector_problem
from ._store import items_collection

__all__ = [
    "BehaviourFeed",
    "behaviour_collection",
    "join_behaviour",
    "marks",
    "prepare_refresh",
    "write_behaviour",
]

log = logging.getLogger(__name__)

#: the sync-state kind of the behaviour feed's checkpoints
KIND = "behaviour"


def behaviour_collection(db: Any, settings: Settings) -> Any:
    """The unversioned behaviour collection (served until a model is published:
    :mod:`._behaviour_model`), read with the same codec as the items (UTC dates)."""
    opts = items_collection(db, settings).codec_options
    return db.get_collection(settings.behaviour_collection, codec_options=opts)


async def write_behaviour(
    db: Any,
    settings: Settings,
    vectors: Mapping[str, Sequence[float]],
    *,
    now: datetime | None = None,
) -> int:
    """Upsert ``item id → vector`` into the served model's collection, all stamped ``now``;
    the items are not touched. Returns the number of vectors written (new or changed).
    A trained model is published whole with :func:`publish_behaviour` instead: this mixes the
    new vectors into the served model's (fixtures, a few vectors set by hand)."""
    return await store_vectors(await served_collection(db, settings), vectors, now or now_ms())


def marks(changed: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Behaviour documents as :class:`~._apply.Applied` entries (their ``updated_at`` is
    their version): what was sent is not sent again by an overlapping re-read."""
    return [{"_id": d.get("_id"), "version": repr(d.get("updated_at"))} for d in changed]


async def _read(db: Any, settings: Settings, ids: list[Any]) -> list[dict[str, Any]]:
    coll = await served_collection(db, settings)
    with backend_errors(f"reading {coll.name} failed"):
        found = await coll.find({"_id": {"$in": ids}}).to_list(None)  # FerretDB: pushed down
    return [d for d in found if d.get("behaviour") is not None]


def _valid(vectors: Mapping[Any, Any], dim: int) -> dict[Any, Any]:
    """The stored vectors that are valid behaviour vectors. One that is not (another length
    after ``behaviour_dim`` changed, NaN from a diverged training) is left out with a
    warning: its item is built as if untrained (a refresh does not send it) instead of being
    refused for a field the application never wrote."""
    out, bad = {}, []
    for key, vec in vectors.items():
        problem = vector_problem(vec, "behaviour", dim)
        if problem is None:
            out[key] = vec
        else:
            bad.append((key, problem))
    if bad:
        log.warning(
            "%d stored behaviour vectors left out (their items built without one), e.g. %r: %s",
            len(bad),
            *bad[0],
        )
    return out


def _joined(docs: Iterable[Any], vectors: Mapping[Any, Any]) -> list[Any]:
    """``docs`` with the stored vector of each (a copy; the stored vector wins)."""
    out = []
    for doc in docs:
        key = doc.get("_id") if isinstance(doc, Mapping) else None
        if isinstance(key, str) and key in vectors:
            doc = {**doc, "behaviour": vectors[key]}
        out.append(doc)
    return out


async def join_behaviour(
    db: Any,
    settings: Settings,
    docs: Sequence[Any],
    joined: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[Any]:
    """Item documents as read from MongoDB, each with its stored behaviour vector (one
    ``_id $in`` read); an item without one keeps whatever ``behaviour`` it carries.
    ``joined`` is given the behaviour documents joined (a build need not send them again)."""
    ids = [d["_id"] for d in docs if isinstance(d, Mapping) and isinstance(d.get("_id"), str)]
    if not ids:
        return list(docs)
    found = await _read(db, settings, ids)
    if joined is not None:
        joined(found)
    stored = _valid({d["_id"]: d["behaviour"] for d in found}, settings.behaviour_dim)
    return _joined(docs, stored)


async def _items(db: Any, settings: Settings, ids: list[str]) -> list[dict[str, Any]]:
    coll = items_collection(db, settings)
    with backend_errors(f"reading {coll.name} failed"):
        return await coll.find({"_id": {"$in": ids}}).to_list(None)


async def prepare_refresh(
    db: Any,
    settings: Settings,
    embedder: Embedder,
    changed: Sequence[Mapping[str, Any]],
    *,
    source: str,
) -> tuple[Prepared, list[dict[str, Any]]]:
    """The engine writes for ``changed`` behaviour documents: their items as MongoDB holds
    them now, each with its new vector, prepared like any change and sent at the item's
    current version with ``external_gte`` (the item did not change; a 409 still means the
    engine holds a newer version, which was built with this vector or a later one).
    A mark of an item the new model left out (``behaviour: None``) sends it without one.
    Returns the prepared writes and the item documents (vectors without an item: none)."""
    vectors = _valid(
        {d["_id"]: d["behaviour"] for d in changed if d.get("behaviour") is not None},
        settings.behaviour_dim,
    )
    left_out = [d["_id"] for d in changed if "behaviour" in d and d["behaviour"] is None]
    ids = [i for i in [*vectors, *left_out] if isinstance(i, str)]
    if not ids:
        return Prepared(), []
    items = _joined(await _items(db, settings, ids), vectors)
    if not items:
        return Prepared(), []
    prepared = await asyncio.to_thread(
        prepare, items, embedder, settings, source=source, delete_invalid=True
    )
    prepared.actions = [a.refreshed() for a in prepared.actions]
    return prepared, items


class BehaviourFeed(PollingFeed):
    """The ``updated_at`` polling feed (:class:`~._feed.PollingFeed`: watermark, overlap,
    partitions, the reindex floor) over the behaviour collection, checkpointed under its
    own kind."""

    name = KIND
    collection = staticmethod(behaviour_collection)

    def mine(self, doc_id: Any) -> bool:
        # a vector whose ``_id`` is no string names no item (none is indexed under it): a
        # document ``_id`` made every pass fail (unhashable), and no change was carried
        return isinstance(doc_id, str) and super().mine(doc_id)

    async def start(self) -> None:
        """Each pass reads the model served when it starts (a switch during a pass is read
        by the next: the previous model's collection outlives it). A partition whose watermark
        was read from another model (or, new, starts at the floor of a reindex that sent
        another model) reads this one from its vectors' stamp: they are stamped when its
        publish began, which may be before that watermark (a ``train`` writing while a reindex
        ran and switching after it: a new sync, starting at that reindex's floor, never sent
        them)."""
        self.coll, stamp = await served_model(self.db, self.settings)
        await super().start()
        for cp in self.checkpoints.values():
            if cp.model not in (None, self.coll.name) and stamp is not None:
                cp.ts = stamp if cp.ts is None else min(cp.ts, stamp)
            cp.model = self.coll.name
