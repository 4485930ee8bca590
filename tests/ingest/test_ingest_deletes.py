"""Hard deletes and the leftovers of dead rebuilds, against the real servers: a one-off
``opendisco sync --once`` reconciles (a document deleted from MongoDB leaves the index), a
hard delete whose answer was lost still settles its document's dead letter, and ``verify``
lists the partial indices of rebuilds that died (``--repair`` deletes them unless a reindex
runs)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from click.testing import CliRunner
from ingest_support import bad_item, bump, dead_letters_of, faulty_engine, write_unrecorded

from opendisco import Settings, clients, index_templates
from opendisco._holder import holder
from opendisco.cli.main import cli
from opendisco.ingest import (
    ChangeBatch,
    Embedder,
    HardDelete,
    Syncer,
    reindex,
    sync_once,
    verify,
)
from opendisco.ingest._run_sync import run_sync


def test_sync_once_takes_hard_deletes_out_of_the_index(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], mongo_db: Any
) -> None:
    """Before, ``sync --once`` never reconciled: a document deleted from MongoDB (no
    tombstone: nothing for the watermark to read) stayed in the index and ``verify`` failed
    until a running worker's next reconciliation (every time)."""
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_one(bad_item(ingest_catalogue[0], "refused"))
    runner = CliRunner()
    assert runner.invoke(cli, ["reindex", "--quiet"], obj=ingest_settings).exit_code == 0
    coll.delete_many({"_id": {"$in": ["p3", "p7", "refused"]}})

    res = runner.invoke(cli, ["sync", "--no-reconcile"], obj=ingest_settings)  # not a worker's
    assert res.exit_code == 2 and "applies to --once" in res.output, res.output
    res = runner.invoke(cli, ["sync", "--once", "--no-reconcile"], obj=ingest_settings)
    assert res.exit_code == 0 and "reconciled:" not in res.output, res.output
    res = runner.invoke(cli, ["verify"], obj=ingest_settings)
    assert res.exit_code == 1 and "extra=2" in res.output, res.output

    res = runner.invoke(cli, ["sync", "--once"], obj=ingest_settings)
    assert res.exit_code == 0, res.output
    assert "reconciled: 0 missing, 0 behind, 2 hard-deleted" in res.output, res.output
    assert "2 deleted, 0 dead-lettered (0 already), 1 dead letters resolved" in res.output
    res = runner.invoke(cli, ["verify"], obj=ingest_settings)
    assert res.exit_code == 0 and "extra=0 " in res.output, res.output
    assert "open_dead_letters=0" in res.output
    assert dead_letters_of(mongo_db, ingest_settings)["refused"]["resolved_by"] == "deleted"


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
        acked = await write_unrecorded(
            ingest_settings, client, embedder, coll.find_one({"_id": "p1"})
        )
        assert len(acked.ok) == 1
        assert dead_letters_of(mongo_db, ingest_settings)["p1"].get("resolved_at") is None
        coll.delete_many({"_id": {"$in": ["p1", "p2"]}})

        lost: list[bytes] = []

        def delete_bulk(method: str, path: str, body: bytes) -> bool:
            if lost or not path.endswith("/_bulk") or b'"delete"' not in body:
                return False
            lost.append(body)
            return True

        async with faulty_engine(ingest_settings) as (proxy, settings, faulty):
            proxy.lose_answer_if = delete_bulk
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
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.open_dead_letters == 0, check.summary()
    finally:
        await client.close()


def test_verify_lists_partial_builds_and_repair_removes_them(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], os_client: Any, mongo_db: Any
) -> None:
    """A rebuild killed midway left its ``building`` index: before, nothing showed it (it
    held disk and heap until the next reindex); ``verify`` lists it without failing, and
    ``verify --repair`` deletes it, but not while a reindex holds the rebuild lease."""
    runner = CliRunner()
    assert runner.invoke(cli, ["reindex", "--quiet"], obj=ingest_settings).exit_code == 0
    orphan = f"{ingest_settings.index_alias}-v19990101000000000000"
    body = index_templates.render("items", ingest_settings)
    started = datetime.now(UTC).isoformat()
    meta = {"state": "building", "pid": os.getpid(), "host": socket.gethostname()}
    body["mappings"]["_meta"] = {"opendisco": {**meta, "started_at": started}}
    os_client.indices.create(index=orphan, body=body)

    res = runner.invoke(cli, ["verify"], obj=ingest_settings)
    assert res.exit_code == 0, res.output
    assert "partial_builds=1\n" in res.output and orphan in res.output, res.output

    leases = mongo_db["reindex_leases"]
    now = datetime.now(UTC)
    leases.insert_one(
        {"_id": ingest_settings.index_alias, "owner": "t", "started_at": now, **holder()}
        | {"expires": now + timedelta(minutes=5)}
    )
    try:
        res = runner.invoke(cli, ["verify", "--repair"], obj=ingest_settings)
        assert res.exit_code == 0, res.output
        assert "partial builds kept: another reindex" in res.output, res.output
        assert "partial_builds=1 (a reindex is running)" in res.output
        assert os_client.indices.exists(index=orphan)
    finally:
        leases.delete_one({"_id": ingest_settings.index_alias})

    res = runner.invoke(cli, ["verify", "--repair"], obj=ingest_settings)
    assert res.exit_code == 0, res.output
    assert f"removed partial builds of rebuilds that died: {orphan}" in res.output
    assert "partial_builds=0" in res.output
    assert not os_client.indices.exists(index=orphan)


async def test_documents_deleted_during_a_rebuild_are_not_in_its_index(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """Documents the build had read and indexed, then deleted from MongoDB before the swap
    (no tombstone: the catch-up reads only what was written), were served by the new index
    and ``verify`` failed (``extra``) until a sync worker's next reconciliation (every
    time); the rebuild removes them before its swap now."""
    coll = mongo_db[ingest_settings.items_collection]
    first = [d["_id"] for d in coll.find({}, {"_id": 1}).limit(5)]  # the first bulk's
    bulks: list[str] = []

    def third_bulk(method: str, path: str) -> bool:
        if path.endswith("/_bulk"):
            bulks.append(path)
            return len(bulks) == 3
        return False

    async with faulty_engine(ingest_settings, bulk_batch_size=20, bulk_concurrency=1) as (
        proxy,
        settings,
        client,
    ):
        proxy.hang_if = third_bulk  # the engine pauses mid-build ...

        async def delete_meanwhile() -> None:
            while not proxy.hung:
                await asyncio.sleep(0.05)
            coll.delete_many({"_id": {"$in": first}})  # ... while the application deletes
            proxy.resume()

        deleter = asyncio.create_task(delete_meanwhile())
        report = await reindex(settings, client=client, embedder=embedder)
        await deleter
        assert report.indexed == len(ingest_catalogue) and report.deleted == len(first)
        check = await verify(settings, client=client)
        assert check.ok and check.indexed == len(ingest_catalogue) - len(first), check.summary()


async def test_sync_once_waits_for_a_live_workers_partition_once(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A partition another live worker holds is waited for (in case its holder is dead) by
    the pass, then skipped; the reconciliation after the pass waited for it a second time,
    doubling ``sync --once``'s time whenever a worker runs."""
    settings = ingest_settings.model_copy(update={"sync_lease_seconds": 8.0})
    client = clients.async_opensearch(settings)
    try:
        await reindex(settings, client=client, embedder=embedder)
        now = datetime.now(UTC)
        scope = f"{settings.index_alias}:{settings.items_collection}"
        count = settings.sync_partitions
        mongo_db["sync_leases"].insert_one(
            {"_id": f"{scope}:p0of{count}:t1", "scope": scope, "of": count, "partition": 0}
            | {"term": 1, "owner": "elsewhere", "expires": now + timedelta(minutes=5)}
        )
        started = time.monotonic()
        report = await sync_once(settings, client=client, embedder=embedder, reconcile=True)
        took = time.monotonic() - started
        assert report.skipped == [0] and report.reconciled is not None
        assert report.reconciled.partitions == report.partitions == list(range(1, count))
        assert 8.0 <= took < 15.0, took  # one wait of the lease (9 s), not two (18 s)
    finally:
        await client.close()


async def test_a_delete_event_of_a_refused_document_settles_its_dead_letter(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A change stream's delete event (a replica set's sync; built by hand here, FerretDB
    has none) of a document that was refused, so never indexed, wrote nothing and left its
    dead letter open until the next reconciliation's sweep (``sync_reconcile_interval``)."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    syncer = Syncer(ingest_settings, client=client, embedder=embedder)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_one(bad_item(ingest_catalogue[0], "refused"))
        await sync_once(ingest_settings, client=client, embedder=embedder)
        assert dead_letters_of(mongo_db, ingest_settings)["refused"].get("resolved_at") is None
        coll.delete_one({"_id": "refused"})
        stats = await syncer.apply(ChangeBatch(hard_deletes=[HardDelete("refused")]))
        assert (stats.deleted, stats.dead_letters_resolved) == (0, 1), stats
        letter = dead_letters_of(mongo_db, ingest_settings)["refused"]
        assert (letter["resolved_by"], letter["resolved_source"]) == ("deleted", "sync")
    finally:
        await syncer.close()
        await client.close()


async def test_a_started_sync_worker_reconciles_after_its_first_pass(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    os_client: Any,
) -> None:
    """Members hard-deleted from MongoDB while no sync worker ran (FerretDB: no change
    stream, nothing for the watermark to read) leave the index once a worker starts: it
    reconciles after its first pass. Before, its first reconciliation came
    ``sync_reconcile_interval`` (300 s) after its start, so a worker restarted more often
    than that (a crash loop, frequent deploys) never took them out of the engine."""
    await reindex(ingest_settings, embedder=embedder)
    gone = ["p3", "p7"]
    mongo_db[ingest_settings.items_collection].delete_many({"_id": {"$in": gone}})
    assert ingest_settings.sync_reconcile_interval >= 300  # not vacuous: the default
    stop, reconciled = asyncio.Event(), []
    worker = asyncio.create_task(
        run_sync(ingest_settings, stop=stop, on_reconcile=reconciled.append)
    )
    try:
        for _ in range(80):
            if reconciled or worker.done():
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await worker
    assert reconciled and reconciled[0].gone == 2 and reconciled[0].deleted == 2, reconciled
    alias = ingest_settings.index_alias
    assert not [i for i in gone if os_client.exists(index=alias, id=i)]
