"""What the polling watermark cannot see, against the real servers: documents without a usable
``updated_at``, hard deletes, backdated writes (reconciliation, ``verify --repair``), typed
dead-letter ids, and a sync that rides out an OpenSearch answering 429/503."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from ingest_support import OPENDISCO, FaultyHttpProxy, worker_env
from tcp_faults import store_proxy

from opendisco import Settings, StoreBackendError, clients, now_ms
from opendisco.cli.main import cli
from opendisco.ingest import Embedder, Syncer, reindex, sync_once, verify


def _bump(coll: Any, doc_id: str, **fields: Any) -> None:
    coll.update_one(
        {"_id": doc_id}, {"$set": {"updated_at": now_ms(), **fields}, "$inc": {"version": 1}}
    )


async def test_documents_without_a_usable_updated_at_are_dead_lettered(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        base = copy.deepcopy(ingest_catalogue[0])
        nodate = {**base, "_id": "nodate", "version": 1}
        del nodate["updated_at"]
        coll.insert_one(nodate)
        coll.insert_one({**base, "_id": "strdate", "version": 1, "updated_at": "yesterday"})
        # p7's new version loses its updated_at: its indexed copy must go
        coll.update_one({"_id": "p7"}, {"$unset": {"updated_at": ""}, "$inc": {"version": 1}})
        report = await sync_once(ingest_settings, client=client, embedder=embedder)
        # p7's stale copy is deleted at its version; nodate and strdate were never indexed:
        # their deletes find nothing and are not counted
        assert report.dead_lettered == 3 and report.deleted == 1, report
        # dead letters of the whole session share one collection: look at ours
        ours = {"source": "sync", "doc_id": {"$in": ["nodate", "strdate", "p7"]}}
        letters = {d["doc_id"]: d for d in mongo_db["dead_letters"].find(ours)}
        assert set(letters) == {"nodate", "strdate", "p7"}
        assert all(d["reason"].startswith("updated_at") for d in letters.values())
        assert letters["p7"]["version"] == 2
        assert not await client.exists(index=ingest_settings.index_alias, id="p7")
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == 3, check.summary()
        # every pass reads them again; they are recorded once
        await sync_once(ingest_settings, client=client, embedder=embedder)
        assert mongo_db["dead_letters"].count_documents(ours) == 3
    finally:
        await client.close()


async def test_reconcile_repairs_hard_deletes_and_backdated_writes(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        await sync_once(ingest_settings, client=client, embedder=embedder)
        time.sleep(ingest_settings.sync_overlap_seconds + 0.5)  # past the overlap window
        gone = [f"p{i}" for i in range(10, 30)]
        coll.delete_many({"_id": {"$in": gone}})  # hard deletes: nothing left to poll
        old = now_ms() - timedelta(days=1)  # backdated writes: behind the watermark
        _bump(coll, "p40", title="Backdated: quiet evenings and chess", updated_at=old)
        late = {**copy.deepcopy(ingest_catalogue[0]), "_id": "late1", "version": 1}
        coll.insert_one({**late, "updated_at": old})
        # no usable version any more (and written behind the watermark too)
        coll.update_one({"_id": "p41"}, {"$set": {"version": "three", "updated_at": old}})
        polled = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert polled.changes == 0  # the watermark sees none of it
        before = await verify(ingest_settings, client=client)
        assert (len(before.extra), len(before.stale), len(before.missing)) == (21, 1, 1)

        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            rec = await syncer.reconcile(take_all=True)
        finally:
            await syncer.close()
        assert (rec.gone, rec.behind, rec.missing, rec.unversioned) == (20, 1, 1, 1), rec
        assert rec.deleted == 21 and rec.indexed == 2 and rec.dead_lettered == 1
        assert rec.partitions == list(range(ingest_settings.sync_partitions))
        after = await verify(ingest_settings, client=client)
        assert after.ok, after.summary()
        doc = await client.get(index=ingest_settings.index_alias, id="p40")
        assert doc["_source"]["title"].startswith("Backdated") and doc["_version"] == 2
        letter = mongo_db["dead_letters"].find_one({"doc_id": "p41"})
        assert letter["reason"].startswith("version")
    finally:
        await client.close()


def test_verify_repair_runs_reconciliation(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], mongo_db: Any
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["reindex", "--quiet"], obj=ingest_settings).exit_code == 0
    mongo_db[ingest_settings.items_collection].delete_many({"_id": {"$in": ["p3", "p4"]}})
    res = runner.invoke(cli, ["verify"], obj=ingest_settings)
    assert res.exit_code == 1 and "extra=2" in res.output
    res = runner.invoke(cli, ["verify", "--repair"], obj=ingest_settings)
    assert res.exit_code == 0, res.output
    assert "2 hard-deleted" in res.output and "extra=0" in res.output


async def test_dead_letter_ids_keep_their_bson_type(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        base = {**copy.deepcopy(ingest_catalogue[0]), "version": 1, "updated_at": now_ms()}
        coll.insert_one({**base, "_id": 424242})  # an int id: not a valid item id
        coll.insert_one({**base, "_id": "424242", "popularity": "lots"})
        report = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert report.dead_lettered == 2
        letters = list(mongo_db["dead_letters"].find({"doc_id": {"$in": [424242, "424242"]}}))
        assert sorted(type(d["doc_id"]).__name__ for d in letters) == ["int", "str"]
        by_type = {type(d["doc_id"]): d for d in letters}
        assert by_type[int]["reason"].startswith("_id")
        assert by_type[str]["reason"].startswith("popularity")
    finally:
        await client.close()


def _writer(settings: Settings, stop: threading.Event, done: list[str]) -> None:
    with clients.mongo(settings) as mc:
        coll = mc[settings.mongo_db][settings.items_collection]
        k = 0
        while not stop.is_set():
            doc_id = f"p{k % 100}"
            _bump(coll, doc_id, popularity=float(k))  # no new text: nothing to encode
            done.append(doc_id)
            k += 1
            time.sleep(0.5)


async def test_sync_rides_out_429_and_503_for_half_a_minute(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        with FaultyHttpProxy(ingest_settings.opensearch_url) as proxy:
            env = worker_env(
                ingest_settings,
                OPENDISCO_OPENSEARCH_URL=proxy.url,
                OPENDISCO_BULK_MAX_RETRIES="2",
                OPENDISCO_BULK_BACKOFF_MAX="1",
                OPENDISCO_SYNC_BACKOFF_MAX="4",  # several backoffs at their cap in the storm
            )
            proc = subprocess.Popen(
                [str(OPENDISCO), "sync"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            stop, written = threading.Event(), []
            writer = threading.Thread(target=_writer, args=(ingest_settings, stop, written))
            try:
                deadline = time.monotonic() + 300  # a loaded machine starts python slowly
                while not proxy.answered.get(200) and time.monotonic() < deadline:
                    time.sleep(0.2)  # the worker is up: it checked the alias through us
                assert proc.poll() is None
                proxy.failing = True
                writer.start()
                time.sleep(30)
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # never exits
                stop.set()
                writer.join()
                assert proxy.answered.get(429, 0) > 3 and proxy.answered.get(503, 0) > 3
                proxy.failing = False
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    check = await verify(ingest_settings, client=client)
                    if check.ok:
                        break
                    time.sleep(1)
                assert check.ok, check.summary()  # caught up: 0 lost
                assert len(written) >= 40
                assert proc.poll() is None
            finally:
                stop.set()
                proc.terminate()
                _, err = proc.communicate(timeout=60)
        log = err.decode()
        assert "backend error" in log and "retrying in" in log and "checkpoint kept" in log
        assert "opensearch=" in log and "mongodb=ok" in log  # health is logged
        assert "reachable again" in log
    finally:
        await client.close()


async def test_a_write_dated_ahead_hides_no_later_write(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A writer whose clock runs two minutes ahead moved the watermark to its ``updated_at``
    (the horizon allowed five minutes of skew): the next ordinary write to another item,
    dated now, was behind the watermark and no polling pass read it (stale until a
    reconciliation). The watermark stops at the reader's clock now."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        _bump(coll, "p3", title="Dated ahead")
        coll.update_one({"_id": "p3"}, {"$set": {"updated_at": now_ms() + timedelta(minutes=2)}})
        assert (await sync_once(ingest_settings, client=client, embedder=embedder)).indexed == 1
        _bump(coll, "p4", title="Written after, dated now")
        assert (await sync_once(ingest_settings, client=client, embedder=embedder)).indexed == 1
        check = await verify(ingest_settings, client=client)
        assert check.ok, check.summary()
    finally:
        await client.close()


async def test_a_write_a_store_stall_held_back_is_synced_without_a_reconciliation(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """The store stalls (both TCP proxies paused, as a SIGSTOPped FerretDB is for everyone)
    while the app marks p5 unavailable: its write, dated before the stall, lands after the
    worker's first pass after the stall read the app's next write (p6). That pass moved the
    watermark past p5's date plus the overlap, and p5 stayed indexed as available until a
    reconciliation (measured on a private FerretDB SIGSTOPped for 20 s: minutes). After a
    stall the worker reads from before it until the held-back writes have landed."""
    overlap = ingest_settings.sync_overlap_seconds
    url = ingest_settings.mongo_url
    worker_side, app_side = await store_proxy(url), await store_proxy(url)
    app = clients.mongo_async(ingest_settings.model_copy(update={"mongo_url": app_side.mongo_url}))
    app_items = app[ingest_settings.mongo_db][ingest_settings.items_collection]
    worker = ingest_settings.model_copy(update={"mongo_url": worker_side.mongo_url})
    client = clients.async_opensearch(ingest_settings)
    syncer = Syncer(worker, client=client, embedder=embedder)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        await app_items.find_one({"_id": "p5"})  # the app's connection is open
        await syncer.check()
        await syncer.once()
        worker_side.pause()
        app_side.pause()
        write = {"$set": {"updated_at": now_ms(), "available": False}, "$inc": {"version": 1}}
        held = asyncio.ensure_future(app_items.update_one({"_id": "p5"}, write))
        stalled = asyncio.ensure_future(syncer.once())
        await asyncio.sleep(3 * overlap)
        await worker_side.resume()
        await stalled
        _bump(mongo_db[ingest_settings.items_collection], "p6", title="Written after the stall")
        assert (await syncer.once()).indexed == 1  # p6
        await app_side.resume()
        await held  # p5's write lands only now
        await syncer.once()
        doc = await client.get(index=ingest_settings.index_alias, id="p5")
        assert doc["_source"]["available"] is False, doc["_version"]
        check = await verify(ingest_settings, client=client)
        assert check.ok, check.summary()
    finally:
        await syncer.close()
        await client.close()
        await app.close()
        await worker_side.close()
        await app_side.close()


async def test_a_store_gone_silent_fails_a_pass_instead_of_hanging_the_worker(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """The store's host is lost without a reset (a partition): the worker's open connections
    never answer again. With no socket timeout a pass waited until the driver's monitor gave
    the server up (its own connection silent too: ~20 s here, ``connectTimeoutMS``) — or for
    good when only the operation's connection went silent (the API's hung claim update);
    now it fails after ``mongo_socket_timeout_s`` as a store error, and later passes, on new
    connections, sync."""
    proxy = await store_proxy(ingest_settings.mongo_url)
    worker = ingest_settings.model_copy(
        update={"mongo_url": proxy.mongo_url, "mongo_socket_timeout_s": 2.0}
    )
    client = clients.async_opensearch(ingest_settings)
    syncer = Syncer(worker, client=client, embedder=embedder)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        await syncer.check()
        await syncer.once()
        proxy.strand()  # the open connections go silent for good; new ones flow
        with pytest.raises(StoreBackendError):
            await asyncio.wait_for(syncer.once(), 12)  # TimeoutError: the old wait
        _bump(mongo_db[ingest_settings.items_collection], "p7", title="Written after the loss")
        for _ in range(10):  # each stranded pooled connection fails once, then new ones
            try:
                rep = await asyncio.wait_for(syncer.once(), 60)
            except StoreBackendError:
                continue
            if rep.indexed:
                break
        doc = await client.get(index=ingest_settings.index_alias, id="p7")
        assert doc["_source"]["title"] == "Written after the loss"
    finally:
        await syncer.close()
        await client.close()
        await proxy.close()


async def test_a_version_read_refused_for_one_document_skips_no_hard_delete(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A realtime ``_mget`` whose answer carries an error for one document (a shard's get
    queue full: 429 in its place) read that document as absent: the reconciliation that
    found it hard-deleted then sent no delete for it and reported the pass done, the
    document still served (every time). The refused read is retried now."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.delete_many({"_id": {"$in": ["p10", "p11"]}})  # hard deletes: nothing to poll
        refused: list[str] = []

        def once(index: str, doc_id: str) -> bool:
            if doc_id != "p10" or refused:
                return False
            refused.append(doc_id)
            return True

        with FaultyHttpProxy(ingest_settings.opensearch_url) as proxy:
            proxy.reject_item = once
            faulty = ingest_settings.model_copy(update={"opensearch_url": proxy.url})
            syncer = Syncer(faulty, embedder=embedder)
            try:
                rec = await syncer.reconcile(take_all=True)
            finally:
                await syncer.close()
        assert refused == ["p10"]
        assert (rec.gone, rec.deleted) == (2, 2), rec
        after = await verify(ingest_settings, client=client)
        assert after.ok, after.summary()
    finally:
        await client.close()
