"""Dead letters have a lifecycle, against the real servers: a refused document's record stays
open until the same document is indexed at its version or later (``resolved_by: indexed``) or
deleted from MongoDB (``deleted``), through sync, reconcile (``verify --repair``) and reindex;
a still-invalid update keeps it open; concurrent writers do not lose a resolution."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner
from ingest_support import bad_item, bump, dead_letters_of, write_unrecorded

from opendisco import Settings, clients, now_ms
from opendisco.cli.main import cli
from opendisco.ingest import BulkWriter, Embedder, Syncer, prepare, reindex, sync_once, verify
from opendisco.ingest._apply import write


def _open(mongo_db: Any, settings: Settings) -> set[Any]:
    return {
        k
        for k, rec in dead_letters_of(mongo_db, settings).items()
        if rec.get("resolved_at") is None
    }


async def _reconcile(settings: Settings, client: Any, embedder: Embedder) -> Any:
    await client.indices.refresh(index=settings.index_alias)  # it compares what search sees
    syncer = Syncer(settings, client=client, embedder=embedder)
    try:
        return await syncer.reconcile(take_all=True)  # what `verify --repair` runs
    finally:
        await syncer.close()


async def test_sync_resolves_fixed_and_deleted_documents(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_many([bad_item(ingest_catalogue[0], k) for k in ("fixme", "tomb", "gone")])
        first = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert first.dead_lettered == 3 and first.deleted == 0, first  # nothing to delete
        assert _open(mongo_db, ingest_settings) == {"fixme", "tomb", "gone"}
        assert (await verify(ingest_settings, client=client)).open_dead_letters == 3

        # a still-invalid update keeps the record open, at the new version and reason
        bump(coll, "fixme", popularity=None, quality="high")
        still = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert (still.dead_lettered, still.dead_letters_resolved) == (1, 0), still
        letter = dead_letters_of(mongo_db, ingest_settings)["fixme"]
        assert letter.get("resolved_at") is None
        assert letter["version"] == 2 and letter["reason"].startswith("quality")

        # fixed with a version bump: indexed, and its record resolved at that version
        bump(coll, "fixme", quality=0.5)
        bump(coll, "tomb", deleted=True)  # a tombstone
        coll.delete_one({"_id": "gone"})  # a hard delete: nothing for the watermark to read
        fixed = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert fixed.indexed == 1 and fixed.dead_letters_resolved == 2, fixed
        assert fixed.deleted == 0  # the tombstone's delete found nothing in the index
        assert (await client.get(index=ingest_settings.index_alias, id="fixme"))["_version"] == 3
        letters = dead_letters_of(mongo_db, ingest_settings)
        assert letters["fixme"]["resolved_by"] == "indexed"
        assert letters["fixme"]["resolved_version"] == 3
        assert letters["fixme"]["resolved_source"] == "sync"
        assert (letters["tomb"]["resolved_by"], letters["tomb"]["resolved_version"]) == (
            "deleted",
            2,
        )
        assert _open(mongo_db, ingest_settings) == {"gone"}

        # the hard delete: reconciliation (sync's periodic pass, `verify --repair`) sweeps it
        rec = await _reconcile(ingest_settings, client, embedder)
        assert rec.dead_letters_resolved == 1 and rec.repairs == 0, rec
        gone = dead_letters_of(mongo_db, ingest_settings)["gone"]
        assert (gone["resolved_by"], gone["resolved_version"]) == ("deleted", None)
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.open_dead_letters == 0, check.summary()

        # the same document back, invalid at a newer version: the record reopens
        coll.insert_one({**bad_item(ingest_catalogue[0], "gone"), "version": 7})
        again = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert again.dead_lettered == 1, again
        assert _open(mongo_db, ingest_settings) == {"gone"}
        assert dead_letters_of(mongo_db, ingest_settings)["gone"]["version"] == 7
    finally:
        await client.close()


async def test_reconcile_does_not_report_known_refusals_again(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_many([bad_item(ingest_catalogue[0], f"bad{i}") for i in range(3)])
        await sync_once(ingest_settings, client=client, embedder=embedder)
        for _ in range(2):  # every pass sees them absent from the index
            rec = await _reconcile(ingest_settings, client, embedder)
            assert (rec.missing, rec.dead_lettered, rec.already_dead_lettered) == (0, 0, 3), rec
        # a fix the watermark misses (backdated) is still repaired: its version is newer
        bump(coll, "bad1", popularity=3.0, updated_at=now_ms().replace(year=2001))
        rec = await _reconcile(ingest_settings, client, embedder)
        assert (rec.missing, rec.indexed, rec.already_dead_lettered) == (1, 1, 2), rec
        assert rec.dead_letters_resolved == 1
        assert _open(mongo_db, ingest_settings) == {"bad0", "bad2"}
    finally:
        await client.close()


async def test_reindex_resolves_fixed_and_deleted_documents(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    ids = ("fixme", "tomb", "gone", "still")
    try:
        coll.insert_many([bad_item(ingest_catalogue[0], k) for k in ids])
        first = await reindex(ingest_settings, client=client, embedder=embedder)
        assert first.dead_lettered == 4
        second = await reindex(ingest_settings, client=client, embedder=embedder)
        assert (second.dead_lettered, second.already_dead_lettered) == (0, 4), second
        assert _open(mongo_db, ingest_settings) == set(ids)

        bump(coll, "fixme", popularity=2.0)
        bump(coll, "tomb", deleted=True)
        coll.delete_one({"_id": "gone"})
        bump(coll, "still", title=None, popularity=1.0)  # still invalid (no title)
        third = await reindex(ingest_settings, client=client, embedder=embedder)
        assert third.dead_letters_resolved == 3 and third.dead_lettered == 1, third
        letters = dead_letters_of(mongo_db, ingest_settings)
        assert {k: letters[k].get("resolved_by") for k in ids} == {
            "fixme": "indexed",
            "tomb": "deleted",
            "gone": "deleted",
            "still": None,
        }
        assert letters["still"]["version"] == 2 and letters["still"]["reason"].startswith("title")
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.open_dead_letters == 1, check.summary()
    finally:
        await client.close()


async def test_a_stale_refusal_does_not_undo_a_resolution(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    async_db: Any,
) -> None:
    """Two writers of one document (a sync worker losing its lease to another, a reindex and
    sync): the slow one's refusal of version 1 lands after the other indexed version 2."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    writer = BulkWriter(client, ingest_settings, ingest_settings.index_alias, alias=True)

    def stale(doc_id: str) -> Any:  # what the slow writer read before the fix
        doc = coll.find_one({"_id": doc_id})
        return prepare([doc], embedder, ingest_settings, source="sync", delete_invalid=True)

    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_many([bad_item(ingest_catalogue[0], k) for k in ("before", "after")])
        # "before": its refusal is recorded first, then the fix is indexed, then the slow
        # writer's refusal arrives again
        await sync_once(ingest_settings, client=client, embedder=embedder)
        slow_before = stale("before")
        # "after": the fix is indexed before any refusal exists (nothing to resolve yet)
        slow_after = stale("after")
        mongo_db["dead_letters"].delete_many({"collection": ingest_settings.items_collection})
        await write(slow_before, writer, async_db, source="sync", seen=1)
        for k in ("before", "after"):
            bump(coll, k, popularity=4.0)
        fixed = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert fixed.indexed == 2 and fixed.dead_letters_resolved == 1, fixed
        late = [
            await write(p, writer, async_db, source="sync", seen=1)
            for p in (slow_before, slow_after)
        ]
        assert late[0].already_dead_lettered == 1 and late[0].dead_lettered == 0  # known
        assert late[1].dead_lettered == 1 and late[1].dead_letters_resolved == 1  # caught
        assert _open(mongo_db, ingest_settings) == set()
        assert all(
            (rec["resolved_by"], rec["resolved_version"]) == ("indexed", 2)
            for rec in dead_letters_of(mongo_db, ingest_settings).values()
        )
    finally:
        await client.close()


async def test_a_replayed_batch_resolves_what_a_crash_left_open(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    async_db: Any,
) -> None:
    """The fix reached the index but its resolution did not (killed in between): the replay
    of the uncommitted batch answers 409, which resolves the record all the same."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_one(bad_item(ingest_catalogue[0], "crash"))
        await sync_once(ingest_settings, client=client, embedder=embedder)
        bump(coll, "crash", popularity=1.0)
        # acknowledged; then the worker dies
        acked = await write_unrecorded(
            ingest_settings, client, embedder, coll.find_one({"_id": "crash"})
        )
        assert len(acked.ok) == 1 and _open(mongo_db, ingest_settings) == {"crash"}
        replay = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert replay.conflicts == 1 and replay.dead_letters_resolved == 1, replay
        assert _open(mongo_db, ingest_settings) == set()
    finally:
        await client.close()


async def test_concurrent_reindex_and_sync_workers_resolve_every_fix(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    ids = [f"fix{i}" for i in range(40)]
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_many([bad_item(ingest_catalogue[i % 50], k) for i, k in enumerate(ids)])
        await sync_once(ingest_settings, client=client, embedder=embedder)
        assert _open(mongo_db, ingest_settings) == set(ids)
        for k in ids[:30]:
            bump(coll, k, popularity=5.0)
        for k in ids[30:35]:
            bump(coll, k, deleted=True)
        coll.delete_many({"_id": {"$in": ids[35:]}})

        async def worker() -> Any:
            syncer = Syncer(ingest_settings, client=client, embedder=embedder)
            try:
                await syncer.check()
                report = await syncer.once()
                await syncer.reconcile()
                return report
            finally:
                await syncer.close()

        await asyncio.gather(
            worker(), worker(), reindex(ingest_settings, client=client, embedder=embedder)
        )
        assert _open(mongo_db, ingest_settings) == set()
        letters = dead_letters_of(mongo_db, ingest_settings)
        assert {letters[k]["resolved_by"] for k in ids[:30]} == {"indexed"}
        assert {letters[k]["resolved_by"] for k in ids[30:]} == {"deleted"}
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.open_dead_letters == 0, check.summary()
    finally:
        await client.close()


def test_cli_lists_open_dead_letters_and_resolved_ones_on_request(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], mongo_db: Any
) -> None:
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_many([bad_item(ingest_catalogue[0], k) for k in ("cli-open", "cli-fixed")])
    runner = CliRunner()
    assert runner.invoke(cli, ["reindex", "--quiet"], obj=ingest_settings).exit_code == 0
    bump(coll, "cli-fixed", popularity=1.0)
    res = runner.invoke(cli, ["sync", "--once"], obj=ingest_settings)
    assert res.exit_code == 0 and "1 dead letters resolved" in res.output, res.output
    res = runner.invoke(cli, ["dead-letters"], obj=ingest_settings)
    assert res.exit_code == 0, res.output
    assert "1 open dead letters" in res.output and "'cli-open'" in res.output
    assert "'cli-fixed'" not in res.output
    res = runner.invoke(cli, ["dead-letters", "--all"], obj=ingest_settings)
    assert "'cli-fixed'" in res.output and "-> indexed at v2" in res.output, res.output
    res = runner.invoke(cli, ["verify"], obj=ingest_settings)
    assert res.exit_code == 0 and "open_dead_letters=1" in res.output, res.output


async def test_records_from_before_the_lifecycle_are_listed_and_swept(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A record of the earlier layout (``_id`` a hash of source, id, version and reason; no
    ``collection``) counts as open until a sweep finds its document fixed."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    legacy = {
        "_id": "0123456789abcdef0123456789abcdef",
        "source": "sync",
        "stage": "validation",
        "doc_id": "old-bad",
        "version": 1,
        "reason": "popularity: expected a number",
        "doc": {"_id": "old-bad"},
        "at": now_ms(),
    }
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.insert_one(
            {**bad_item(ingest_catalogue[0], "old-bad"), "popularity": 1.0, "version": 2}
        )
        mongo_db["dead_letters"].insert_one(legacy)
        assert (await verify(ingest_settings, client=client)).open_dead_letters == 1
        fixed = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert fixed.indexed == 1 and fixed.dead_letters_resolved == 0  # not its key
        rec = await _reconcile(ingest_settings, client, embedder)
        assert rec.dead_letters_resolved == 1, rec
        swept = mongo_db["dead_letters"].find_one({"_id": legacy["_id"]})
        assert (swept["resolved_by"], swept["resolved_version"]) == ("indexed", 2)
        assert (await verify(ingest_settings, client=client)).open_dead_letters == 0
    finally:
        mongo_db["dead_letters"].delete_one({"_id": legacy["_id"]})  # every namespace sees it
        await client.close()


async def test_a_refusal_with_odd_field_names_moves_its_record(
    mongo_db: Any, async_db: Any
) -> None:
    """A new version's refusal updates the record in place: field names FerretDB refuses in
    an update (``$x``, ``a.b``; pymongo then fails on its answer) are stored escaped."""
    from opendisco.ingest._letters import dead_letter, record

    coll = "odd-names"
    for version in (1, 2):
        doc = {"_id": "odd", "version": version, "$set": 1, "a.b": {"$c.d": 2}}
        letter = dead_letter("sync", "validation", doc, "kind: required", collection=coll)
        done = await record(async_db, [letter], collection=coll, source="sync")
        assert done.written == 1
    (rec,) = list(mongo_db["dead_letters"].find({"collection": coll}))
    assert rec["version"] == 2 and rec["doc"]["a\uff0eb"] == {"\uff04c\uff0ed": 2}
    mongo_db["dead_letters"].delete_many({"collection": coll})
