"""Odd documents against the real servers: none stops the feed, none is left half-applied.

Each case is a document FerretDB stores that once got past validation into a bulk request
OpenSearch refused (as a whole, or for itself while ``verify`` kept expecting it), or that a
sync worker re-applied on every pass.
"""

from __future__ import annotations

import copy
from typing import Any

from opendisco import Settings, clients, now_ms
from opendisco.ingest import Embedder, Syncer, reindex, sync_once, verify


def _item(base: dict[str, Any], doc_id: Any, **patch: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    doc.update({"_id": doc_id, "version": 1, "updated_at": now_ms(), **patch})
    return doc


def _bump(coll: Any, doc_id: Any, **fields: Any) -> None:
    coll.update_one(
        {"_id": doc_id}, {"$set": {**fields, "updated_at": now_ms()}, "$inc": {"version": 1}}
    )


async def test_empty_string_id_does_not_block_sync_or_repair(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """``_id: ""`` is invalid (dead letter) and must not become a delete action: OpenSearch
    refuses an empty id for the whole bulk request, which stopped every valid change with it."""
    client = clients.async_opensearch(ingest_settings)
    coll = mongo_db[ingest_settings.items_collection]
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_one(_item(ingest_catalogue[0], ""))
        _bump(coll, "p1", title="Renamed while an empty id waits in the feed")
        report = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert (report.indexed, report.dead_lettered) == (1, 1)
        doc = await client.get(index=ingest_settings.index_alias, id="p1")
        assert doc["_version"] == 2
        letter = mongo_db["dead_letters"].find_one({"doc_id": "", "source": "sync"})
        assert letter is not None and letter["reason"].startswith("_id")

        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            repaired = await syncer.reconcile(take_all=True)  # what `verify --repair` runs
        finally:
            await syncer.close()
        assert repaired.missing == 1 and repaired.dead_lettered == 1
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == 1, check.summary()
    finally:
        await client.close()


async def test_unhashable_id_is_applied_once_per_version(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A document re-read on every polling pass (its ``updated_at`` is not a date) with an
    embedded-document or null ``_id`` is dead-lettered once, then skipped like any other:
    re-applying it made every pass report a change, and ``run_sync`` never idled."""
    client = clients.async_opensearch(ingest_settings)
    coll = mongo_db[ingest_settings.items_collection]
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_one(_item(ingest_catalogue[0], {"tenant": "a", "n": 1}, updated_at="soon"))
        coll.insert_one(_item(ingest_catalogue[1], None, updated_at="later"))
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            first = await syncer.once(take_all=True)
            assert first.dead_lettered == 2
            again = await syncer.once(take_all=True)
            assert (again.seen, again.dead_lettered) == (0, 0)
        finally:
            await syncer.close()
    finally:
        await client.close()
