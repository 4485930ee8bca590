"""Hard deletes and the leftovers of dead rebuilds, against the real servers: a one-off
``opendisco sync --once`` reconciles (a document deleted from MongoDB leaves the index), a
hard delete whose answer was lost still settles its document's dead letter, and ``verify``
lists the partial indices of rebuilds that died (``--repair`` deletes them unless a reindex
runs)."""

from __future__ import annotations

from typing import Any

from ingest_support import FaultyHttpProxy, bump, dead_letters_of

from opendisco import Settings, clients
from opendisco.ingest import (
    BulkWriter,
    ChangeBatch,
    Embedder,
    HardDelete,
    Syncer,
    prepare,
    reindex,
    sync_once,
    verify,
)


async def test_a_hard_delete_whose_answer_was_lost_settles_its_dead_letter(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """The engine applied a hard delete and the connection was cut before its answer: the
    transport's resend was answered 409 by the delete's own tombstone, taken for "the
    document came back", so the delete counted as a conflict and the open dead letter of the
    document (gone from MongoDB and from the index) stayed open (every time)."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        bump(coll, "p1", popularity="lots")  # v2 refused: dead-lettered, its copy removed
        await sync_once(ingest_settings, client=client, embedder=embedder)
        # fixed at v3 and indexed by a sync killed before it recorded the resolution
        bump(coll, "p1", popularity=2.0)
        prepared = prepare(
            [coll.find_one({"_id": "p1"})],
            embedder,
            ingest_settings,
            source="sync",
            delete_invalid=True,
        )
        writer = BulkWriter(client, ingest_settings, ingest_settings.index_alias, alias=True)
        assert len((await writer.write(prepared.actions)).ok) == 1
        assert dead_letters_of(mongo_db, ingest_settings)["p1"].get("resolved_at") is None
        coll.delete_many({"_id": {"$in": ["p1", "p2"]}})

        lost: list[bytes] = []

        def delete_bulk(method: str, path: str, body: bytes) -> bool:
            if lost or not path.endswith("/_bulk") or b'"delete"' not in body:
                return False
            lost.append(body)
            return True

        with FaultyHttpProxy(ingest_settings.opensearch_url) as proxy:
            proxy.lose_answer_if = delete_bulk
            settings = ingest_settings.model_copy(update={"opensearch_url": proxy.url})
            faulty = clients.async_opensearch(settings)
            syncer = Syncer(settings, client=faulty, embedder=embedder)
            try:
                # what a change stream's delete event applies (a replica set's sync)
                stats = await syncer.apply(ChangeBatch(hard_deletes=[HardDelete("p1")]))
                assert proxy.lost == 1
                assert (stats.deleted, stats.conflicts, stats.dead_letters_resolved) == (1, 0, 1)
                letter = dead_letters_of(mongo_db, ingest_settings)["p1"]
                assert (letter["resolved_by"], letter["resolved_version"]) == ("deleted", None)

                lost.clear()  # the same through reconciliation (polling sync, verify --repair)
                rec = await syncer.reconcile(take_all=True)
                assert proxy.lost == 2
                assert (rec.gone, rec.deleted, rec.conflicts) == (1, 1, 0), rec
            finally:
                await syncer.close()
                await faulty.close()
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.open_dead_letters == 0, check.summary()
    finally:
        await client.close()
