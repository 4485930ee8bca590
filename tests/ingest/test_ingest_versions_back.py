"""MongoDB's versions going back (a restore from a backup, a document deleted and created
again at version 1, a migration rewriting documents): the engine must not keep the newer,
stale copy for good, and no repair may remove a copy MongoDB has caught up with."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from opendisco import Settings, clients, now_ms
from opendisco.ingest import Applied, Embedder, Syncer, reconcile, reindex, sync_once, verify

AT_5 = ("p5", "p6", "p7")


@pytest.fixture
async def at_5(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """The catalogue indexed, then ``AT_5`` written and synced at version 5: the items
    collection and an engine client."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        at = {"$set": {"version": 5, "updated_at": now_ms()}}
        coll.update_many({"_id": {"$in": list(AT_5)}}, at)
        await sync_once(ingest_settings, client=client, embedder=embedder)
        yield coll, client
    finally:
        await client.close()


async def _forget_deletes_now(client: Any, settings: Settings) -> None:
    """The engine forgets a delete's tombstone after ``index.gc_deletes`` (60 s): 0 s here,
    pruned at the next refresh, so the test need not wait a minute."""
    alias = settings.index_alias
    await client.indices.put_settings(index=alias, body={"index": {"gc_deletes": "0s"}})


async def _pruned(client: Any, settings: Settings) -> None:
    await client.indices.refresh(index=settings.index_alias)
    await asyncio.sleep(0.3)  # the engine's cached clock (200 ms) passes the tombstones' age


async def test_reconcile_converges_to_mongodb_when_versions_go_back(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    at_5: tuple[Any, Any],
) -> None:
    coll, client = at_5
    await _forget_deletes_now(client, ingest_settings)
    old = now_ms() - timedelta(days=1)  # a backup's dates: behind the watermark
    restored = {**coll.find_one({"_id": "p5"}), "version": 1, "available": False}
    coll.replace_one({"_id": "p5"}, {**restored, "updated_at": old})
    recreated = {**copy.deepcopy(ingest_catalogue[6]), "version": 1, "updated_at": old}
    coll.delete_one({"_id": "p6"})
    coll.insert_one({**recreated, "title": "Created again"})
    coll.update_one({"_id": "p7"}, {"$set": {"version": 2, "deleted": True}})
    before = await verify(ingest_settings, client=client)
    assert (len(before.stale), before.ahead, before.extra) == (2, 2, ["p7"]), before.summary()

    syncer = Syncer(ingest_settings, client=client, embedder=embedder)
    try:
        rec = await syncer.reconcile(take_all=True)
        # the stale copies go at once (MongoDB's older one cannot be written over them)
        assert (rec.ahead, rec.deleted, rec.conflicts) == (3, 3, 0), rec
        for key in AT_5:
            assert not await client.exists(index=ingest_settings.index_alias, id=key)
        await _pruned(client, ingest_settings)
        # once the engine forgot the deletes, MongoDB's copies are written at their version
        rec = await syncer.reconcile(take_all=True)
        assert (rec.missing, rec.indexed, rec.ahead) == (2, 2, 0), rec
    finally:
        await syncer.close()
    after = await verify(ingest_settings, client=client)
    assert after.ok, after.summary()
    p5 = await client.get(index=ingest_settings.index_alias, id="p5")
    assert p5["_version"] == 1 and p5["_source"]["available"] is False
    p6 = await client.get(index=ingest_settings.index_alias, id="p6")
    assert p6["_version"] == 1 and p6["_source"]["title"] == "Created again"


async def test_a_regression_mongodb_caught_up_with_during_the_scan_is_left_alone(
    ingest_settings: Settings, embedder: Embedder, at_5: tuple[Any, Any]
) -> None:
    """The scan read MongoDB's p5 at version 1 (the index: 5); before the repair the app
    wrote version 6, which sync has not applied yet. Deleting the index's copy at 6 would
    make that write a 409 and leave p5 absent until the tombstone is forgotten and a later
    reconciliation runs: the repair reads MongoDB again and leaves p5 to sync."""
    coll, client = at_5
    old = now_ms() - timedelta(days=1)
    coll.update_one({"_id": "p5"}, {"$set": {"version": 1, "updated_at": old}})
    seen: list[str] = []

    def owns(key: Any) -> bool:
        # MongoDB's stream reads p5 first, the index's second: the app writes between
        seen.append(key)
        if key == "p5" and seen.count("p5") == 2:
            change = {"version": 6, "updated_at": now_ms(), "title": "Caught up"}
            coll.update_one({"_id": "p5"}, {"$set": change})
        return True

    syncer = Syncer(ingest_settings, client=client, embedder=embedder)
    try:
        await client.indices.refresh(index=ingest_settings.index_alias)
        rec = await reconcile(syncer, owns=lambda key: key == "p5" and owns(key))
    finally:
        await syncer.close()
    assert rec.ahead == 1 and rec.deleted == 0, rec
    await sync_once(ingest_settings, client=client, embedder=embedder)
    p5 = await client.get(index=ingest_settings.index_alias, id="p5")
    assert p5["_version"] == 6 and p5["_source"]["title"] == "Caught up"


async def test_a_reindex_after_a_restore_serves_mongodb_copies(
    ingest_settings: Settings, embedder: Embedder, at_5: tuple[Any, Any]
) -> None:
    """The restore procedure's rebuild (docs/operations.md): also the copies reconciliation
    cannot see, their version gone back and up again to the indexed one with other content."""
    coll, client = at_5
    old = now_ms() - timedelta(days=1)
    coll.update_one({"_id": "p5"}, {"$set": {"version": 1, "available": False, "updated_at": old}})
    coll.update_one({"_id": "p6"}, {"$set": {"title": "Restored, then edited up to 5"}})
    before = await verify(ingest_settings, client=client)
    assert (before.ahead, before.mismatched) == (1, ["p6"]), before.summary()
    await reindex(ingest_settings, client=client, embedder=embedder)
    after = await verify(ingest_settings, client=client)
    assert after.ok, after.summary()
    p5 = await client.get(index=ingest_settings.index_alias, id="p5")
    assert p5["_version"] == 1 and p5["_source"]["available"] is False


def test_a_sync_worker_applies_the_writes_after_its_versions_went_back() -> None:
    """A worker that applied p5 at version 5 reads it at 1, then 2, after a restore: those
    are changes (the engine refuses them while it holds 5, and takes them once reconcile
    removed that copy), not re-reads to skip — only the same version again is one."""
    applied = Applied()
    applied.remember([{"_id": "p5", "version": 5}])
    assert applied.fresh([{"_id": "p5", "version": 5}]) == []
    for version in (1, 2):
        doc = {"_id": "p5", "version": version}
        assert applied.fresh([doc]) == [doc]
        applied.remember([doc])
        assert applied.fresh([doc]) == []
    applied.forget(["p5"])  # its indexed copy removed: the same version is applied again
    assert applied.fresh([{"_id": "p5", "version": 2}]) == [{"_id": "p5", "version": 2}]
