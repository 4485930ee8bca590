"""Odd documents against the real servers: none stops the feed, none is left half-applied.

Each case is a document FerretDB stores that once got past validation into a bulk request
OpenSearch refused (as a whole, or for itself while ``verify`` kept expecting it), or that a
sync worker re-applied on every pass.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import bson

from opendisco import Settings, clients, now_ms
from opendisco.ingest import Embedder, Syncer, reindex, sync_once, verify
from opendisco.ingest._letter_copy import MAX_LETTER_DOC
from opendisco.ingest._letters import dead_letter


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
        # refused at this very version already: not missing, not a new dead letter
        assert (repaired.missing, repaired.dead_lettered) == (0, 0), repaired
        assert repaired.already_dead_lettered == 1
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


async def test_numbers_opensearch_cannot_hold_are_caught_by_validation(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A finite double past float32 (``popularity`` 4e38, a behaviour component 1e39) or a
    vector that is zero in float32 was accepted by validation and refused by OpenSearch, so
    ``verify`` reported it missing for ever; positive values below float32's smallest normal
    number were refused as rank features. Now: dead letters at validation, or indexed."""
    dim = ingest_settings.behaviour_dim
    base = ingest_catalogue[0]
    bad = {
        "pop-4e38": _item(base, "pop-4e38", popularity=4e38),
        "beh-1e39": _item(base, "beh-1e39", behaviour=[1e39] + [0.1] * (dim - 1)),
        "beh-f16": _item(base, "beh-f16", behaviour=[70_000.0] + [0.1] * (dim - 1)),
        "beh-f32-zero": _item(base, "beh-f32-zero", behaviour=[1e-46] * dim),
    }
    good = {
        "pop-tiny": _item(base, "pop-tiny", popularity=1e-40),
        "quality-tiny": _item(base, "quality-tiny", quality=1e-40),
        "quality-denormal": _item(base, "quality-denormal", quality=5e-324),
        "beh-small": _item(base, "beh-small", behaviour=[1e-40] * dim),
    }
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_many([*bad.values(), *good.values()])
    client = clients.async_opensearch(ingest_settings)
    try:
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert report.indexed == len(ingest_catalogue) + len(good)
        letters = {
            d["doc_id"]: d for d in mongo_db["dead_letters"].find({"doc_id": {"$in": list(bad)}})
        }
        assert set(letters) == set(bad)
        assert {d["stage"] for d in letters.values()} == {"validation"}
        assert letters["pop-4e38"]["reason"].startswith("popularity")
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == len(bad), check.summary()
        # fixed in MongoDB, the next sync indexes it
        _bump(coll, "pop-4e38", popularity=4.0)
        assert (await sync_once(ingest_settings, client=client, embedder=embedder)).indexed == 1
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


async def test_integral_float_version_survives_reconcile(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """``version: 2.0`` (a double, as some drivers write it) validates as 2 and is indexed;
    reconciliation read it as "no usable version" and deleted the valid document."""
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_one(_item(ingest_catalogue[0], "float-version", version=2.0))
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            repaired = await syncer.reconcile(take_all=True)
        finally:
            await syncer.close()
        assert (repaired.unversioned, repaired.deleted) == (0, 0)
        doc = await client.get(index=ingest_settings.index_alias, id="float-version")
        assert doc["_version"] == 2
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


async def test_a_version_made_unusable_then_fixed_at_the_next_is_indexed_at_once(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A document whose ``version`` became unusable (``"one"``) is dead-lettered and its
    indexed copy removed; fixed at the next version, the next pass indexes it. The removal
    was a delete at the indexed version + 1 — the fix's own version: the fix met the delete's
    tombstone (a 409, taken as settled: its dead letter resolved as indexed) and stayed out
    of the index until the tombstone expired (``index.gc_deletes``, 60 s) and a later
    reconciliation applied it."""
    s = ingest_settings
    coll = mongo_db[s.items_collection]
    key = "fixed-later"  # dead letters are the session's: no catalogue id of other tests
    coll.insert_one(_item(ingest_catalogue[0], key))
    client = clients.async_opensearch(s)
    try:
        await reindex(s, client=client, embedder=embedder)
        held = (await client.get(index=s.index_alias, id=key))["_version"]
        coll.update_one({"_id": key}, {"$set": {"version": "one", "updated_at": now_ms()}})
        first = await sync_once(s, client=client, embedder=embedder, reconcile=True)
        assert first.reconciled is not None and first.reconciled.unversioned == 1, first
        assert not await client.exists(index=s.index_alias, id=key)  # unavailable: not served
        assert mongo_db["dead_letters"].find_one({"doc_id": key, "resolved_at": None})

        fix = {"version": held + 1, "title": "Fixed", "updated_at": now_ms()}
        coll.update_one({"_id": key}, {"$set": fix})
        second = await sync_once(s, client=client, embedder=embedder)
        assert (second.indexed, second.conflicts) == (1, 0), second
        doc = await client.get(index=s.index_alias, id=key)
        assert (doc["_version"], doc["_source"]["title"]) == (held + 1, "Fixed")
        letter = mongo_db["dead_letters"].find_one({"doc_id": key})
        assert (letter["resolved_by"], letter["resolved_version"]) == ("indexed", held + 1)
        assert (await verify(s, client=client)).ok
    finally:
        await client.close()


async def test_reconcile_follows_a_refused_document_whose_deleted_flag_is_no_boolean(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """``deleted: 1`` is no tombstone (refused: the flag is a boolean); absent from the index,
    reconciliation took it for one and skipped it, so a backdated write of a new version,
    which no sync pass reads, kept its dead letter at the old version."""
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_one(_item(ingest_catalogue[0], "flag-one", deleted=1))
    client = clients.async_opensearch(ingest_settings)
    try:
        assert (await reindex(ingest_settings, client=client, embedder=embedder)).dead_lettered
        old = now_ms() - timedelta(days=30)
        coll.update_one({"_id": "flag-one"}, {"$set": {"updated_at": old}, "$inc": {"version": 1}})
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            repaired = await syncer.reconcile(take_all=True)
        finally:
            await syncer.close()
        assert repaired.dead_lettered == 1, repaired
        letter = mongo_db["dead_letters"].find_one({"doc_id": "flag-one"})
        assert (letter["version"], letter.get("resolved_at")) == (2, None)
        assert "deleted" in letter["reason"]
    finally:
        await client.close()


def test_a_refused_document_near_the_size_limit_makes_a_record_under_it(
    ingest_catalogue: list[dict[str, Any]],
) -> None:
    """A record kept a whole copy of the refused document: one near MongoDB's 16 MiB limit
    made a record over it, refused by the driver before any write (``DocumentTooLarge``,
    no ``BulkWriteError``), and every pass that refused it failed. A copy over
    ``MAX_LETTER_DOC`` keeps the id and the size; the reason is kept whole."""
    big = _item(ingest_catalogue[0], "huge", popularity="lots", blob="b" * (16 * 1024 * 1024))
    letter = dead_letter("sync", "validation", big, "popularity: not a number", collection="c")
    assert len(bson.encode(letter)) < MAX_LETTER_DOC + 4096
    assert letter["doc"] == {"_id": "huge", "too_large": True, "bytes": len(bson.encode(big))}
    assert (letter["doc_id"], letter["reason"]) == ("huge", "popularity: not a number")
    small = _item(ingest_catalogue[0], "small", popularity="lots")
    kept = dead_letter("sync", "validation", small, "popularity", collection="c")["doc"]
    assert kept["_id"] == "small" and kept["popularity"] == "lots"  # a whole copy


async def test_a_large_refused_document_is_dead_lettered_beside_the_valid_ones(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A refused document over the record's bound (2 MiB) is dead-lettered with its id,
    size and reason, and the valid documents beside it are indexed."""
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_one(_item(ingest_catalogue[0], "large", popularity="lots", blob="b" * (2 << 20)))
    client = clients.async_opensearch(ingest_settings)
    try:
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert (report.indexed, report.dead_lettered) == (len(ingest_catalogue), 1), report
        letter = mongo_db["dead_letters"].find_one({"doc_id": "large"})
        assert letter["doc"]["too_large"] and letter["doc"]["bytes"] > 2 << 20
        assert "popularity" in letter["reason"]
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == check.open_dead_letters == 1, check.summary()
    finally:
        await client.close()


async def test_hard_delete_of_a_non_string_id_spares_its_namesake(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    async_db: Any,
) -> None:
    """A change stream's delete event of ``_id: 515151`` (dead-lettered, never indexed) was
    applied as a hard delete of ``str(key)``: the valid document ``"515151"`` left the index.
    FerretDB has no change streams, so the event is handed to the feed's router as MongoDB
    sends it; the delete it yields goes through the real sync write path."""
    from opendisco.ingest._checkpoints import Checkpoint
    from opendisco.ingest._feed import ChangeBatch, ChangeStreamFeed

    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_many([_item(ingest_catalogue[0], "515151"), _item(ingest_catalogue[1], 515151)])
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        coll.delete_one({"_id": 515151})
        feed = ChangeStreamFeed(ingest_settings, async_db)
        feed.checkpoints = {p: Checkpoint(p) for p in feed.partitions}
        batch = ChangeBatch()
        for key in (515151, ""):
            event = {"_id": {"_data": "8201"}, "operationType": "delete"}
            feed._route({**event, "documentKey": {"_id": key}}, batch)
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            await syncer.apply(batch)
        finally:
            await syncer.close()
        assert await client.exists(index=ingest_settings.index_alias, id="515151")
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


async def test_dead_letters_keep_their_null_fields(mongo_db: Any, async_db: Any) -> None:
    """Every record has ``doc_id`` and ``version`` (docs/architecture.md): FerretDB dropped
    the nulls of a document with ``_id: null`` and no usable version, as ``$setOnInsert`` set
    them, and a reader of ``letter["doc_id"]`` failed on exactly the odd documents."""
    from opendisco.ingest._letters import dead_letter, record

    odd = {"_id": None, "kind": "movie", "title": "t", "version": "one"}
    for _ in range(2):  # a first record, then the same one read again
        letter = dead_letter("null-test", "validation", odd, "_id", collection="null-test")
        await record(async_db, [letter], collection="null-test", source="null-test")
    (letter,) = list(mongo_db["dead_letters"].find({"source": "null-test"}))
    assert "doc_id" in letter and letter["doc_id"] is None
    assert "version" in letter and letter["version"] is None
    assert letter["doc"]["version"] == "one" and letter["reason"] == "_id"


async def test_datetime_id_keeps_its_dead_letter_open(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """An invalid document whose ``_id`` is (or holds) a date stays refused while it exists:
    the sweep read the records' ids with the database's codec (another ``tzinfo``, so
    another ``repr`` than the items' codec gives), did not find the document and resolved its
    record as deleted, in the very reindex that opened it."""
    from datetime import UTC, datetime

    coll = mongo_db[ingest_settings.items_collection]
    ids = [datetime(2020, 1, 1, tzinfo=UTC), {"t": datetime(2021, 1, 1, tzinfo=UTC)}]
    coll.insert_many([_item(ingest_catalogue[i], doc_id) for i, doc_id in enumerate(ids)])
    client = clients.async_opensearch(ingest_settings)
    try:
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert (report.dead_lettered, report.dead_letters_resolved) == (2, 0)
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            repaired = await syncer.reconcile(take_all=True)  # its sweep, by partition
        finally:
            await syncer.close()
        assert repaired.dead_letters_resolved == 0, repaired
        letters = mongo_db["dead_letters"].find({"collection": ingest_settings.items_collection})
        assert [rec.get("resolved_at") for rec in letters] == [None, None]
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == check.open_dead_letters == 2, check.summary()
    finally:
        await client.close()


async def test_ids_the_api_cannot_name_are_dead_lettered(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """An item is indexed only under an id the API takes (``opendisco.Id``): ``"a b"`` or
    ``"../x"`` were indexed and served, yet every event naming them (an impression of the
    list they were served in) made the whole batch a 422, and ``/similar`` refused them."""
    from pydantic import TypeAdapter, ValidationError

    from opendisco._domain import Id

    ids = [" ", "a b", "../../_bulk", "a?b#c", "\U0001f642", "a\x01b", "x\n", "ok-1:a@b.c_d"]
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_many([_item(ingest_catalogue[i], doc_id) for i, doc_id in enumerate(ids)])
    client = clients.async_opensearch(ingest_settings)
    try:
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        letters = {
            d["doc_id"]: d["reason"]
            for d in mongo_db["dead_letters"].find({"collection": ingest_settings.items_collection})
        }
        for doc_id in ids:
            try:
                TypeAdapter(Id).validate_python(doc_id)
                named = True
            except ValidationError:
                named = False
            indexed = await client.exists(index=ingest_settings.index_alias, id=doc_id)
            assert bool(indexed) == named, (doc_id, letters.get(doc_id))
            assert named or letters[doc_id].startswith("_id"), (doc_id, letters.get(doc_id))
        assert report.dead_lettered == len(ids) - 1
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == len(ids) - 1, check.summary()
    finally:
        await client.close()


def test_items_are_read_with_the_clients_utf8_tolerance(
    ingest_settings: Settings, mongo_db: Any
) -> None:
    """A string that is not UTF-8 (a real MongoDB keeps what another driver wrote; FerretDB
    stores U+FFFD instead, so the server's answer is decoded here as the feeds decode it)
    reads with U+FFFD in place of the bad bytes, as every client of ours reads it: the items
    collection's own codec (UTC dates, out-of-range dates kept) was strict, and such a
    document failed every read of its batch (every reindex, every sync pass, for ever)."""
    import bson

    from opendisco.ingest import items_collection
    from opendisco.ingest._behaviour import behaviour_collection

    raw = bson.encode({"_id": "bad-utf8", "title": "ABCD", "created_at": bson.DatetimeMS(-1)})
    raw = raw.replace(b"ABCD", b"A\xff\xfeD")
    late = bson.encode({"_id": "late", "updated_at": bson.DatetimeMS(253402300800000 + 1)})
    for coll in (
        items_collection(mongo_db, ingest_settings),
        behaviour_collection(mongo_db, ingest_settings),
    ):
        doc = bson.decode(raw, codec_options=coll.codec_options)
        assert doc["title"] == "A\ufffd\ufffdD"
        assert doc["created_at"].tzinfo is not None  # UTC-aware, as before
        assert isinstance(
            bson.decode(late, codec_options=coll.codec_options)["updated_at"], bson.DatetimeMS
        )


async def test_an_id_stored_in_another_form_keeps_its_dead_letter_open(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A record whose ``doc_id`` had to be stored in another form (an out-of-range date is
    kept as the text ``DatetimeMS(...)``: default codecs cannot read it back) stays open
    while its document exists: the sweep looked that text up in the items, found nothing and
    resolved the record as deleted in the very reindex that opened it (``verify`` then
    counted one invalid document more than open dead letters). Deleted, it is resolved."""
    from bson import DatetimeMS

    late = DatetimeMS(253402300800000 + 5)  # 10000-01-01: FerretDB stores it
    ids = [late, {"d": late}]
    coll = mongo_db[ingest_settings.items_collection]
    coll.insert_many([_item(ingest_catalogue[i], doc_id) for i, doc_id in enumerate(ids)])
    client = clients.async_opensearch(ingest_settings)
    syncer = Syncer(ingest_settings, client=client, embedder=embedder)
    try:
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert (report.dead_lettered, report.dead_letters_resolved) == (2, 0)
        assert (await syncer.reconcile(take_all=True)).dead_letters_resolved == 0
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == check.open_dead_letters == 2, check.summary()
        coll.delete_one({"_id": late})
        assert (await syncer.reconcile(take_all=True)).dead_letters_resolved == 1
        check = await verify(ingest_settings, client=client)
        assert check.invalid == check.open_dead_letters == 1, check.summary()
    finally:
        await syncer.close()
        await client.close()


async def test_ids_python_takes_for_equal_are_each_dead_lettered(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """``_id: true`` and ``_id: 1`` are two MongoDB documents, but one key of the sync
    worker's memory of what it applied (``True == 1`` in Python): the one read in a later
    pass was skipped as already applied and never dead-lettered (``verify``: 4 invalid,
    3 open)."""
    coll = mongo_db[ingest_settings.items_collection]
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            coll.insert_many([_item(ingest_catalogue[0], 1), _item(ingest_catalogue[1], 0)])
            assert (await syncer.once(take_all=True)).dead_lettered == 2
            coll.insert_many([_item(ingest_catalogue[2], True), _item(ingest_catalogue[3], False)])
            assert (await syncer.once(take_all=True)).dead_lettered == 2
        finally:
            await syncer.close()
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == check.open_dead_letters == 4, check.summary()
    finally:
        await client.close()


async def test_a_tombstone_settles_whatever_its_id(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """``deleted: true`` with a version deletes the document whatever its id: a refused
    ``_id: 7`` or ``"x" * 600`` tombstoned later was refused again by sync at the new version
    (its record reopened for a deleted document) and counted ``invalid`` by ``verify``; a
    reindex skipped a tombstone with no usable version, which sync and ``verify`` refuse
    (verify: 1 invalid, 0 open)."""
    coll = mongo_db[ingest_settings.items_collection]
    ids = [7, "x" * 600, "a/b"]
    coll.insert_many([_item(ingest_catalogue[i], doc_id) for i, doc_id in enumerate(ids)])
    coll.insert_one(_item(ingest_catalogue[3], "gone-unversioned", deleted=True, version="x"))
    client = clients.async_opensearch(ingest_settings)
    try:
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert report.dead_lettered == len(ids) + 1
        for doc_id in ids:
            _bump(coll, doc_id, deleted=True)
        syncer = Syncer(ingest_settings, client=client, embedder=embedder)
        try:
            passed = await syncer.once(take_all=True)
        finally:
            await syncer.close()
        assert (passed.dead_lettered, passed.dead_letters_resolved) == (0, len(ids)), passed
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == check.open_dead_letters == 1, check.summary()
    finally:
        await client.close()
