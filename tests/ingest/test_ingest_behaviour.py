"""Trained behaviour vectors live in a collection of our own, never in the app's items.

The race: on FerretDB 1.x an update rewrites the whole document, so ``train`` updating items
while the app marks members unavailable or deleted lost some of the app's writes (a member
came back as available). Then: the vectors reach the engine through sync (no version bump),
survive a crash between the store write and the engine write, and an item that still
carries an old ``behaviour`` field keeps working (the stored vector wins).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from tcp_faults import store_proxy

from opendisco import Settings, StoreBackendError, clients, now_ms
from opendisco._published import Draft, behaviour_models
from opendisco.ingest import (
    Embedder,
    Syncer,
    publish_behaviour,
    reindex,
    store_vector,
    sync_once,
    vector_values,
    verify,
    write_behaviour,
    write_sample,
)

#: app writes per item during the race (each item is written by one app connection only:
#: two app connections writing one document race on FerretDB as well, which is not ours)
ROUNDS = 5


def _vectors(ids: list[str], dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.standard_normal(dim).astype(np.float32) for i in ids}


async def test_train_writes_never_lose_concurrent_app_writes(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]]
) -> None:
    s = ingest_settings
    ids = [d["_id"] for d in ingest_catalogue[:60]]
    mongos = [clients.mongo_async(s) for _ in range(4)]  # train's + 3 app connections
    try:
        db = mongos[0][s.mongo_db]
        before = {d["_id"]: d async for d in db[s.items_collection].find({"_id": {"$in": ids}})}
        done = asyncio.Event()
        trained = 0

        async def train() -> None:
            nonlocal trained
            while not done.is_set():
                await write_behaviour(db, s, _vectors(ids, s.behaviour_dim, trained))
                trained += 1

        async def app(k: int) -> None:
            coll = mongos[1 + k][s.mongo_db][s.items_collection]
            for _ in range(ROUNDS):
                for j, i in enumerate(ids):
                    if j % 3 == k:
                        flag = {"deleted": True} if j % 2 else {"available": False}
                        inc = {"version": 1, "app_writes": 1}
                        await coll.update_one({"_id": i}, {"$set": flag, "$inc": inc})

        async def apps() -> None:
            try:
                await asyncio.gather(*(app(k) for k in range(3)))
            finally:
                done.set()

        await asyncio.gather(train(), apps())
        after = {d["_id"]: d async for d in db[s.items_collection].find({"_id": {"$in": ids}})}
    finally:
        for m in mongos:
            await m.close()
    assert trained >= 1  # train wrote while the app did (until the app was done)
    lost = []
    for j, i in enumerate(ids):
        doc = after[i]
        flag_kept = doc.get("deleted") is True if j % 2 else doc.get("available") is False
        if not flag_kept or doc.get("app_writes") != ROUNDS:
            lost.append(i)
    assert lost == [], f"{len(lost)} of {len(ids)} items lost an app write"
    for i in ids:  # and train owns none of the app's fields
        doc = after[i]
        assert doc["version"] == before[i]["version"] + ROUNDS
        assert doc["updated_at"] == before[i]["updated_at"]
        assert "behaviour" not in doc


async def _engine(s: Settings, ids: list[str]) -> dict[str, dict[str, Any]]:
    client = clients.async_opensearch(s)
    try:
        await client.indices.refresh(index=s.index_alias)
        resp = await client.mget(index=s.index_alias, body={"ids": ids})
    finally:
        await client.close()
    return {d["_id"]: d["_source"] for d in resp["docs"] if d.get("found")}


def _same(got: list[float] | None, want: np.ndarray) -> bool:
    return got is not None and np.allclose(got, want, atol=1e-6)


async def test_sync_carries_new_vectors_without_a_version_bump(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
) -> None:
    s = ingest_settings
    ids = [d["_id"] for d in ingest_catalogue]
    await reindex(s, embedder=embedder)
    first = _vectors(ids[:50], s.behaviour_dim, 1)
    await write_behaviour(async_db, s, first)
    rep = await sync_once(s, db=async_db, embedder=embedder)
    assert rep.behaviour == 50 and rep.encoded == 0, rep
    docs = await _engine(s, ids)
    assert all(_same(docs[i].get("behaviour"), first[i]) for i in ids[:50])
    assert all(docs[i].get("behaviour") is None for i in ids[50:])
    assert all(docs[i]["source_version"] == 1 for i in ids)  # the items did not change
    # a second training at the same item versions replaces the vectors (external_gte)
    second = _vectors(ids[:50], s.behaviour_dim, 2)
    await write_behaviour(async_db, s, second)
    # meanwhile the app changes some items: they are indexed with the stored vector
    coll = async_db[s.items_collection]
    await coll.update_many(
        {"_id": {"$in": ids[:5]}}, {"$set": {"version": 2, "updated_at": now_ms()}}
    )
    syncer = Syncer(s, db=async_db, embedder=embedder)
    try:
        await syncer.check()
        rep = await syncer.once(take_all=True)
        assert rep.behaviour == 50, rep
        docs = await _engine(s, ids)
        assert all(_same(docs[i].get("behaviour"), second[i]) for i in ids[:50])
        assert [docs[i]["source_version"] for i in ids[:6]] == [2, 2, 2, 2, 2, 1]
        assert (await verify(s, db=async_db)).ok
        # nothing new: the overlap re-read is not sent again
        again = await syncer.once(take_all=True)
        assert again.behaviour == 0 and again.changes == 0, again
    finally:
        await syncer.close()


async def test_an_item_the_next_model_leaves_out_loses_the_old_models_vector(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
) -> None:
    """A model's vector beside the next model's means nothing: an item the next training
    has no vector for (no positives left in its data) is sent again without one."""
    s = ingest_settings
    ids = [d["_id"] for d in ingest_catalogue]
    await reindex(s, embedder=embedder)

    async def published(vectors: dict[str, np.ndarray]) -> Any:
        await publish_behaviour(async_db, s, vectors)
        return await sync_once(s, db=async_db, embedder=embedder)

    assert (await published(_vectors(ids[:20], s.behaviour_dim, 1))).behaviour == 20
    second = _vectors(ids[:10], s.behaviour_dim, 2)
    rep = await published(second)
    assert rep.behaviour == 20 and rep.encoded == 0, rep  # 10 new vectors, 10 without one
    docs = await _engine(s, ids)
    assert all(_same(docs[i].get("behaviour"), second[i]) for i in ids[:10])
    assert [i for i in ids[10:] if docs[i].get("behaviour") is not None] == []
    assert (await verify(s, db=async_db)).ok
    # the next model does not carry the marks of items without a vector along
    assert (await published(second)).behaviour == 10


class _Crash(Exception):
    """The sync process dies here (before the engine got the vectors)."""


async def test_crash_between_store_and_engine_converges_on_next_sync(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
) -> None:
    s = ingest_settings.model_copy(update={"bulk_batch_size": 20, "sync_batch_size": 20})
    ids = [d["_id"] for d in ingest_catalogue]
    await reindex(s, embedder=embedder)
    assert (await sync_once(s, db=async_db, embedder=embedder)).changes == 0
    vectors = _vectors(ids, s.behaviour_dim, 3)
    await write_behaviour(async_db, s, vectors)
    verified = await verify(s, db=async_db)
    assert len(verified.mismatched) == len(ids)  # verify sees the engine is behind

    syncer = Syncer(s, db=async_db, embedder=embedder)
    real, sent = syncer.writer.write, []

    async def dies_after_one_bulk(actions: Any) -> Any:
        actions = list(actions)
        if any(a.refresh for a in actions):
            if sent:
                raise _Crash
            sent.append(len(actions))
        return await real(actions)

    syncer.writer.write = dies_after_one_bulk  # type: ignore[method-assign]
    try:
        await syncer.check()
        try:
            await syncer.once(take_all=True)
        except _Crash:
            pass
        else:
            raise AssertionError("the pass should have died in its second behaviour bulk")
    finally:
        await syncer.close()
    assert sent == [20]
    docs = await _engine(s, ids)
    behind = [i for i in ids if not _same(docs[i].get("behaviour"), vectors[i])]
    assert len(behind) == len(ids) - 20
    # the restarted worker resumes from the behaviour checkpoint, which the crash left behind
    rep = await sync_once(s, db=async_db, embedder=embedder)
    assert rep.behaviour >= len(behind), rep
    docs = await _engine(s, ids)
    assert all(_same(docs[i].get("behaviour"), vectors[i]) for i in ids)
    assert (await verify(s, db=async_db)).ok


async def test_items_with_an_old_behaviour_field_keep_working(
    ingest_settings: Settings, embedder: Embedder, async_db: Any
) -> None:
    s = ingest_settings
    rng = np.random.default_rng(4)
    old, new = (rng.standard_normal((3, s.behaviour_dim)).astype(np.float32) for _ in range(2))
    items = [
        {"_id": f"o{k}", "kind": "listing", "title": f"old item {k}", "behaviour": v}
        for k, v in enumerate(
            [vector_values(old[0]), store_vector(old[1]), store_vector(old[2])]  # both forms
        )
    ]
    write_sample(s, items)
    await write_behaviour(async_db, s, {"o1": new[1], "o2": new[2]})
    await reindex(s, embedder=embedder)
    docs = await _engine(s, ["o0", "o1", "o2"])
    assert _same(docs["o0"]["behaviour"], old[0])  # no stored vector: the item's own
    assert _same(docs["o1"]["behaviour"], new[1]) and _same(docs["o2"]["behaviour"], new[2])
    # sync of an app change of such an item: the stored vector still wins
    await async_db[s.items_collection].update_one(
        {"_id": "o2"},
        {"$set": {"title": "renamed", "updated_at": now_ms()}, "$inc": {"version": 1}},
    )
    await sync_once(s, db=async_db, embedder=embedder)
    docs = await _engine(s, ["o2"])
    assert docs["o2"]["title"] == "renamed" and _same(docs["o2"]["behaviour"], new[2])
    assert (await verify(s, db=async_db)).ok


async def _reindex_with_after_first_bulk(
    s: Settings, embedder: Embedder, call: Callable[[Any], Awaitable[None]]
) -> Any:
    """Reindex ``s``, running ``call(db)`` (another process's write: its own client, in a
    thread) once the first bulk is acknowledged; asserts that was after 100 documents."""

    async def other() -> None:
        mongo = clients.mongo_async(s)
        try:
            await call(mongo[s.mongo_db])
        finally:
            await mongo.close()

    ran: list[int] = []

    def progress(done: int, _: int | None) -> None:
        if not ran:  # after the first bulk: its items went without that write
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, other()).result()
            ran.append(done)

    report = await reindex(s, embedder=embedder, progress=progress)
    assert ran == [100] and report.indexed >= 120
    return report


async def test_vectors_trained_during_a_reindex_reach_the_new_index(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    s = ingest_settings  # 100 documents per bulk: the 120 items are built in two batches
    ids = [d["_id"] for d in ingest_catalogue]
    vectors = _vectors(ids, s.behaviour_dim, 5)

    async def train(db: Any) -> None:
        await write_behaviour(db, s, vectors)

    await _reindex_with_after_first_bulk(s, embedder, train)
    docs = await _engine(s, ids)
    assert all(_same(docs[i].get("behaviour"), vectors[i]) for i in ids)
    assert all(docs[i]["source_version"] == 1 for i in ids)


async def test_a_bad_stored_vector_never_takes_its_item_out_of_the_index(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
) -> None:
    """A stored vector of another length (``behaviour_dim`` changed) or with NaN (a diverged
    training) is left out: the item is indexed as if untrained, not refused; a bad retrain
    of an indexed item leaves its engine document as it was."""
    s = ingest_settings
    ids = [d["_id"] for d in ingest_catalogue]
    good = _vectors(ids[:3], s.behaviour_dim, 6)
    nan = np.full(s.behaviour_dim, np.nan, dtype=np.float32)
    short = np.ones(s.behaviour_dim - 1, dtype=np.float32)
    await write_behaviour(async_db, s, {ids[0]: nan, ids[1]: short, ids[2]: good[ids[2]]})
    await reindex(s, embedder=embedder)
    docs = await _engine(s, ids)
    assert set(docs) == set(ids)  # every item indexed
    assert docs[ids[0]].get("behaviour") is None and docs[ids[1]].get("behaviour") is None
    assert _same(docs[ids[2]].get("behaviour"), good[ids[2]])
    letters = async_db["dead_letters"]  # the session's: this test's collection only
    assert await letters.count_documents({"collection": s.items_collection}) == 0
    # a bad retrain of an indexed item: sync does not send it; the engine keeps the good one
    await write_behaviour(async_db, s, {ids[2]: nan})
    await sync_once(s, db=async_db, embedder=embedder)
    docs = await _engine(s, ids[:3])
    assert _same(docs[ids[2]].get("behaviour"), good[ids[2]])
    assert await letters.count_documents({"collection": s.items_collection}) == 0


async def test_a_stored_vector_whose_id_names_no_item_is_skipped(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
) -> None:
    """A behaviour document whose ``_id`` is no string (an embedded document, a number: no
    item is indexed under it) is skipped by sync: a document ``_id`` made every pass fail
    (unhashable in the applied memory), so no worker carried any change any more."""
    from opendisco.ingest._behaviour_model import served_collection

    s = ingest_settings
    ids = [d["_id"] for d in ingest_catalogue]
    await reindex(s, embedder=embedder)
    good = _vectors(ids[:1], s.behaviour_dim, 7)
    await write_behaviour(async_db, s, good)
    coll = await served_collection(async_db, s)
    vec = store_vector(good[ids[0]])
    await coll.insert_many(
        [{"_id": key, "behaviour": vec, "updated_at": now_ms()} for key in ({"n": 1}, 7)]
    )
    await async_db[s.items_collection].update_one(
        {"_id": ids[1]},
        {"$set": {"title": "Renamed", "updated_at": now_ms()}, "$inc": {"version": 1}},
    )
    report = await sync_once(s, db=async_db, embedder=embedder)
    assert report.behaviour == 1 and report.indexed == 2, report
    docs = await _engine(s, ids[:2])
    assert _same(docs[ids[0]].get("behaviour"), good[ids[0]])
    assert docs[ids[1]]["title"] == "Renamed"

    # stamped after a reindex's start (a train writing meanwhile, a clock ahead), such
    # documents reach the build's refresh of the vectors written since: skipped there too —
    # every reindex failed on them (unhashable) and left its partial build behind
    later = now_ms() + timedelta(days=1)
    await coll.insert_many(
        [{"_id": key, "behaviour": vec, "updated_at": later} for key in ({"n": 2}, 8)]
    )
    built = await reindex(s, embedder=embedder)
    assert built.indexed == len(ids), built
    docs = await _engine(s, ids[:2])
    assert _same(docs[ids[0]].get("behaviour"), good[ids[0]])
    check = await verify(s)
    assert check.ok and not check.partial_builds, check.summary()


async def test_a_vector_a_store_stall_held_back_is_synced_after_a_failed_pass(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
) -> None:
    """The store stalls (both TCP proxies paused) while ``train`` writes a vector: the write,
    dated before the stall, lands after the worker's first pass after it read a later vector.
    The stalled pass failed (socket timeout) and the worker reopened its feeds, as its loop
    does; the behaviour feed used to start with no memory of the stall then, moved its
    watermark past the held-back vector's date plus the overlap, and the vector waited for a
    reconciliation. Its stalls are now kept across feeds, like the items feed's."""
    s = ingest_settings
    ids = [d["_id"] for d in ingest_catalogue]
    vectors = _vectors(ids[:3], s.behaviour_dim, 7)
    worker_side, app_side = await store_proxy(s.mongo_url), await store_proxy(s.mongo_url)
    app = clients.mongo_async(s.model_copy(update={"mongo_url": app_side.mongo_url}))
    worker = s.model_copy(
        update={"mongo_url": worker_side.mongo_url, "mongo_socket_timeout_s": 2.0}
    )
    client = clients.async_opensearch(s)
    syncer = Syncer(worker, client=client, embedder=embedder)
    try:
        await reindex(s, client=client, embedder=embedder)
        await write_behaviour(app[s.mongo_db], s, {ids[0]: vectors[ids[0]]})  # connection open
        await syncer.check()
        assert (await syncer.once(take_all=True)).behaviour == 1
        worker_side.pause()
        app_side.pause()
        held = asyncio.ensure_future(write_behaviour(app[s.mongo_db], s, {ids[1]: vectors[ids[1]]}))
        with pytest.raises(StoreBackendError):
            await syncer.once()
        await syncer.reset()  # what the worker's loop does after a failed pass
        await asyncio.sleep(3 * s.sync_overlap_seconds)
        await worker_side.resume()
        await write_behaviour(async_db, s, {ids[2]: vectors[ids[2]]})
        assert (await syncer.once()).behaviour == 1  # ids[2]
        await app_side.resume()
        assert await held == 1  # the held-back vector lands only now
        await syncer.once()
        docs = await _engine(s, ids[:3])
        assert all(_same(docs[i].get("behaviour"), vectors[i]) for i in ids[:3])
    finally:
        await syncer.close()
        await client.close()
        await app.close()
        await worker_side.close()
        await app_side.close()


async def test_a_model_switched_during_a_reindex_reaches_every_item_of_the_new_index(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
) -> None:
    """A model's vectors are stamped when its publish began: a ``train`` that began writing
    before the reindex and switched the pointer during the build stamped them before the
    build's start, and the catch-up (vectors stamped since the start) sent none again. The
    items built before the switch kept the previous model's vectors beside the new model's
    in one index (two models' axes side by side) until a sync pass."""
    s = ingest_settings  # 100 documents per bulk: the 120 items are built in two batches
    ids = [d["_id"] for d in ingest_catalogue]
    await publish_behaviour(async_db, s, _vectors(ids, s.behaviour_dim, 1))
    second = _vectors(ids, s.behaviour_dim, 2)
    gens = behaviour_models(async_db, s)
    draft = await gens.begin("als-slow")  # a train whose publish began a minute ago
    began = now_ms() - timedelta(minutes=1)
    docs = [
        {"_id": i, "behaviour": store_vector(v), "updated_at": began} for i, v in second.items()
    ]
    await gens.write(draft, docs, chunk=1000)

    async def switch(db: Any) -> None:  # after the first bulk: built with the first model
        gens = behaviour_models(db, s)
        mine = Draft(gens.named(draft.coll.name), draft.version, draft.current)
        await gens.commit(mine, documents=len(ids), published_at=began)

    await _reindex_with_after_first_bulk(s, embedder, switch)
    docs = await _engine(s, ids)
    assert [i for i in ids if not _same(docs[i].get("behaviour"), second[i])] == []


@pytest.mark.parametrize("synced_before", [False, True])
async def test_a_model_switched_after_a_reindex_reaches_a_sync_that_starts_at_its_floor(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    async_db: Any,
    synced_before: bool,
) -> None:
    """A behaviour feed partition without a checkpoint starts at the last reindex's floor; a
    model whose publish began before that reindex and switched after it is stamped before the
    floor, and such a sync never sent it (``verify``: every item ``mismatched``, until the next
    train) — nor a sync whose first pass, before the switch, saved its checkpoints there."""
    s = ingest_settings
    ids = [d["_id"] for d in ingest_catalogue]
    await publish_behaviour(async_db, s, _vectors(ids, s.behaviour_dim, 1))
    second = _vectors(ids, s.behaviour_dim, 2)
    gens = behaviour_models(async_db, s)
    draft = await gens.begin("als-slow")  # a train writing while the reindex runs
    began = now_ms() - timedelta(minutes=1)
    docs = [
        {"_id": i, "behaviour": store_vector(v), "updated_at": began} for i, v in second.items()
    ]
    await gens.write(draft, docs, chunk=1000)
    await reindex(s, embedder=embedder)
    if synced_before:  # its checkpoints: past the new model's stamp, read from the first
        await sync_once(s, db=async_db, embedder=embedder)
    await gens.commit(draft, documents=len(ids), published_at=began)
    rep = await sync_once(s, db=async_db, embedder=embedder)
    assert rep.behaviour == len(ids), rep
    got = await _engine(s, ids)
    assert [i for i in ids if not _same(got[i].get("behaviour"), second[i])] == []
    assert (await verify(s, db=async_db)).ok
