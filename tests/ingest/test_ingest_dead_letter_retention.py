"""Resolved dead letters are kept ``dead_letter_days``, then purged, against the real servers:
each reconcile pass (and reindex) and ``dead-letters --purge`` delete the records resolved
longer ago, never an open record however old, never another collection's; a refusal whose
record a purge deletes between its read and its write is written anew (nothing is lost)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from ingest_support import bad_item, bump, dead_letters_of

from opendisco import Settings, clients, now_ms
from opendisco.cli.main import cli
from opendisco.ingest import BulkWriter, Embedder, Syncer, prepare, reindex, sync_once
from opendisco.ingest import _letters as letters_mod
from opendisco.ingest._apply import write


def _age(mongo_db: Any, settings: Settings, doc_id: str, field: str, days: float) -> None:
    """Move a record's ``field`` (a date) ``days`` into the past."""
    key = {"collection": settings.items_collection, "doc_id": doc_id}
    mongo_db["dead_letters"].update_one(key, {"$set": {field: now_ms() - timedelta(days=days)}})


async def test_reconcile_and_the_cli_purge_only_resolved_records_past_their_retention(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    settings = ingest_settings.model_copy(update={"dead_letter_days": 30.0})
    coll = mongo_db[settings.items_collection]
    client = clients.async_opensearch(settings)
    other = {"_id": f"other-{settings.items_collection}", "collection": "someone_elses_items"}
    try:
        await reindex(settings, client=client, embedder=embedder)
        coll.insert_many([bad_item(ingest_catalogue[0], k) for k in ("old", "recent", "open")])
        await sync_once(settings, client=client, embedder=embedder)
        for k in ("old", "recent"):
            bump(coll, k, popularity=2.0)
        fixed = await sync_once(settings, client=client, embedder=embedder)
        assert fixed.dead_letters_resolved == 2 and fixed.dead_letters_purged == 0, fixed

        _age(mongo_db, settings, "old", "resolved_at", 31)  # past the retention
        _age(mongo_db, settings, "recent", "resolved_at", 29)  # not yet
        _age(mongo_db, settings, "open", "at", 400)  # open: kept whatever its age
        _age(mongo_db, settings, "open", "first_at", 400)
        mongo_db["dead_letters"].insert_one(
            {**other, "doc_id": "x", "resolved_at": now_ms() - timedelta(days=400)}
        )
        await client.indices.refresh(index=settings.index_alias)
        syncer = Syncer(settings, client=client, embedder=embedder)
        try:
            passed = await syncer.reconcile(take_all=True)
        finally:
            await syncer.close()
        assert passed.dead_letters_purged == 1, passed
        left = dead_letters_of(mongo_db, settings)
        assert set(left) == {"recent", "open"}
        assert left["open"].get("resolved_at") is None
        assert mongo_db["dead_letters"].count_documents({"_id": other["_id"]}) == 1

        _age(mongo_db, settings, "recent", "resolved_at", 31)
        rebuilt = await reindex(settings, client=client, embedder=embedder)
        assert rebuilt.dead_letters_purged == 1, rebuilt
        assert set(dead_letters_of(mongo_db, settings)) == {"open"}
    finally:
        mongo_db["dead_letters"].delete_one({"_id": other["_id"]})
        await client.close()


def test_cli_purges_on_demand(ingest_settings: Settings, mongo_db: Any) -> None:
    """``dead-letters --purge``: the same purge now, then the listing."""
    settings = ingest_settings.model_copy(update={"dead_letter_days": 7.0})
    now, name = now_ms(), settings.items_collection
    mongo_db["dead_letters"].insert_many(
        [
            {"_id": f"{name}-a", "collection": name, "doc_id": "a", "at": now,
             "resolved_at": now - timedelta(days=8)},
            {"_id": f"{name}-b", "collection": name, "doc_id": "b", "at": now,
             "resolved_at": now - timedelta(days=6)},
            {"_id": f"{name}-c", "collection": name, "doc_id": "c",
             "at": now - timedelta(days=90)},
        ]
    )  # fmt: skip
    res = CliRunner().invoke(cli, ["dead-letters", "--purge", "--all"], obj=settings)
    assert res.exit_code == 0, res.output
    assert "purged 1 dead letters resolved more than 7 days ago" in res.output, res.output
    assert "1 open dead letters" in res.output
    assert set(dead_letters_of(mongo_db, settings)) == {"b", "c"}
    again = CliRunner().invoke(cli, ["dead-letters", "--purge"], obj=settings)
    assert "purged 0 dead letters" in again.output, again.output


async def test_a_refusal_whose_record_is_purged_meanwhile_is_written_anew(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    async_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A purge (another worker's reconcile pass) deletes the resolved record after the
    refusal of a newer version read it and before it updates it: the update matches
    nothing, so the refusal is inserted as a new record."""
    settings = ingest_settings
    coll = mongo_db[settings.items_collection]
    client = clients.async_opensearch(settings)
    writer = BulkWriter(client, settings, settings.index_alias, alias=True)
    try:
        await reindex(settings, client=client, embedder=embedder)
        coll.insert_one(bad_item(ingest_catalogue[0], "again"))
        await sync_once(settings, client=client, embedder=embedder)
        bump(coll, "again", popularity=2.0)
        await sync_once(settings, client=client, embedder=embedder)
        assert dead_letters_of(mongo_db, settings)["again"]["resolved_version"] == 2
        bump(coll, "again", popularity="many")  # refused again, at version 3
        refused = prepare(
            [coll.find_one({"_id": "again"})],
            embedder,
            settings,
            source="sync",
            delete_invalid=True,
        )

        real, purges = letters_mod._records, []

        async def read_then_purged(db: Any, keys: Any) -> dict[str, dict[str, Any]]:
            keys = list(keys)
            out = await real(db, keys)
            if not purges:  # the first read only: the purge lands between read and write
                res = await db["dead_letters"].delete_many({"_id": {"$in": keys}})
                purges.append(res.deleted_count)
            return out

        monkeypatch.setattr(letters_mod, "_records", read_then_purged)
        done = await write(refused, writer, async_db, source="sync", seen=1)
        assert purges == [1]
        assert done.dead_lettered == 1, done
        rec = dead_letters_of(mongo_db, settings)["again"]
        assert rec.get("resolved_at") is None and rec["version"] == 3
        assert rec["reason"].startswith("popularity")
    finally:
        await client.close()
