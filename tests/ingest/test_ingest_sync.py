"""Sync against real servers: insert/update/delete, behaviour without re-encode, replays."""

from __future__ import annotations

import copy
import random
from typing import Any

from opendisco import Settings, clients, now_ms
from opendisco.ingest import (
    ChangeBatch,
    Embedder,
    Syncer,
    reindex,
    sync_once,
    verify,
)


def _bump(coll: Any, doc_id: str, **fields: Any) -> dict[str, Any]:
    coll.update_one(
        {"_id": doc_id}, {"$set": {**fields, "updated_at": now_ms()}, "$inc": {"version": 1}}
    )
    return coll.find_one({"_id": doc_id})


async def test_sync_applies_insert_update_delete(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    client = clients.async_opensearch(ingest_settings)
    coll = mongo_db[ingest_settings.items_collection]
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        new = copy.deepcopy(ingest_catalogue[0])
        new.update(_id="fresh1", title="Brand new member who loves sailing", version=1)
        new["updated_at"] = now_ms()
        coll.insert_one(new)
        _bump(coll, "p1", title="Renamed: astronomy and tea")
        _bump(coll, "p2", deleted=True)
        behaviour = [0.01 * (i + 1) for i in range(ingest_settings.behaviour_dim)]
        _bump(coll, "p3", behaviour=behaviour)
        before = (await verify(ingest_settings, client=client)).summary()
        assert "missing=1" in before and "extra=1" in before and "stale=2" in before

        encoded_before = embedder.encoded
        report = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert report.mode == "polling"
        assert (report.indexed, report.deleted, report.dead_lettered) == (3, 1, 0)
        # two new texts were encoded; the behaviour-only change reused the cache
        assert embedder.encoded - encoded_before == 2
        check = await verify(ingest_settings, client=client)
        assert check.ok, check.summary()
        doc = await client.get(index=ingest_settings.index_alias, id="p3")
        assert doc["_source"]["behaviour"] == behaviour and doc["_version"] == 2
        assert not await client.exists(index=ingest_settings.index_alias, id="p2")

        # a second pass re-reads the overlap window and changes nothing
        again = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert again.indexed == again.deleted == 0
        assert (await verify(ingest_settings, client=client)).ok

        # the newest version turning invalid removes the stale copy and dead-letters it
        _bump(coll, "p4", quality=7.5)
        bad = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert bad.dead_lettered == 1
        assert not await client.exists(index=ingest_settings.index_alias, id="p4")
        letter = mongo_db["dead_letters"].find_one({"doc_id": "p4", "source": "sync"})
        assert letter["stage"] == "validation" and letter["reason"].startswith("quality")
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


async def test_shuffled_duplicate_replay_ends_equal_to_mongo(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    rng = random.Random(1234)
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    history: list[dict[str, Any]] = []  # every version ever written, tombstones included
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        ids = [d["_id"] for d in ingest_catalogue[:40]]
        for step in range(120):
            doc_id = rng.choice(ids)
            roll = rng.random()
            if roll < 0.1:
                history.append(_bump(coll, doc_id, deleted=True))
            elif roll < 0.2:
                history.append(_bump(coll, doc_id, deleted=False))  # resurrected in MongoDB
            elif roll < 0.5:
                history.append(_bump(coll, doc_id, title=f"replay title {doc_id} {step % 7}"))
            else:
                history.append(_bump(coll, doc_id, popularity=float(step)))
        events = history + rng.sample(history, len(history))  # every event, some twice
        rng.shuffle(events)
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            for start in range(0, len(events), 25):
                # a fresh syncer memory per batch: nothing is skipped, every write hits OpenSearch
                syncer.applied.clear()
                await syncer.apply(ChangeBatch(docs=events[start : start + 25]))
        finally:
            syncer.feed = None
            await syncer.close()
        check = await verify(ingest_settings, client=client)
        assert check.ok, (check.summary(), check.missing[:5], check.extra[:5], check.stale[:5])
    finally:
        await client.close()
