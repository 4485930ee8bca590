"""Every bad-document kind lands in ``dead_letters`` with its reason; the run continues."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from bson import DatetimeMS

from opendisco import Settings, clients, index_templates, now_ms
from opendisco.ingest import Action, BulkWriter, Embedder, prepare, reindex, verify
from opendisco.ingest._apply import write


def _deep() -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(12):
        value = {"n": value}
    return value


def _bad_docs(base: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Bad documents FerretDB can store, with the field their reason starts with."""

    def doc(doc_id: str, **patch: Any) -> dict[str, Any]:
        d = copy.deepcopy(base)
        d.update(_id=doc_id, version=1, updated_at=now_ms(), **patch)
        return d

    return {
        "year_10000_date": (
            doc("bad-date", created_at=DatetimeMS(253402300800000 + 1)),
            "created_at",
        ),
        "year_10000_int": (doc("bad-year", year=10000), "year"),
        "wrong_type": (doc("bad-type", popularity="lots"), "popularity"),
        "keyword_40kb": (doc("bad-keyword", category="k" * 40_000), "category"),
        "id_too_long": (doc("x" * 600), "_id"),
        "deep_nesting": (doc("bad-deep", annotations=_deep()), "annotations"),
        "no_version": ({**doc("bad-version"), "version": None}, "version"),
    }


async def test_bad_documents_are_dead_lettered_and_counted(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    bad = _bad_docs(ingest_catalogue[0])
    # a tombstone whose other fields are invalid is a delete, not a refusal: not counted
    tombstone = {**bad["wrong_type"][0], "_id": "gone-bad-type", "deleted": True}
    mongo_db[ingest_settings.items_collection].insert_many(
        [d for d, _ in bad.values()] + [tombstone]
    )
    client = clients.async_opensearch(ingest_settings)
    try:
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert report.indexed == len(ingest_catalogue)  # the run continued past every bad one
        assert report.dead_lettered == len(bad)
        letters = {
            d["doc_id"]: d
            for d in mongo_db["dead_letters"].find(
                {
                    "collection": ingest_settings.items_collection,
                    "source": "reindex",
                    "stage": "validation",
                }
            )
        }
        for kind, (doc, field) in bad.items():
            letter = letters.get(doc["_id"])
            assert letter is not None, kind
            assert letter["reason"].startswith(field), (kind, letter["reason"])
            assert letter["doc"]["_id"] == doc["_id"] and isinstance(letter["at"], datetime)
        check = await verify(ingest_settings, client=client)
        assert check.ok and check.invalid == len(bad), check.summary()
        # a second run records each bad document once (ids are content hashes)
        await reindex(ingest_settings, client=client, embedder=embedder)
        assert mongo_db["dead_letters"].count_documents(
            {
                "collection": ingest_settings.items_collection,
                "doc_id": {"$in": [d["_id"] for d, _ in bad.values()]},
            }
        ) == len(bad)
    finally:
        await client.close()


async def test_non_finite_numbers_from_a_real_mongodb(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    async_db: Any,
) -> None:
    # FerretDB refuses NaN/Inf on write, MongoDB stores them: feed such documents directly
    base = copy.deepcopy(ingest_catalogue[1])
    docs = [
        {**base, "_id": "nan-pop", "popularity": float("nan")},
        {**base, "_id": "inf-quality", "quality": float("inf")},
        {**base, "_id": "nan-vector", "behaviour": [float("nan")] * ingest_settings.behaviour_dim},
        {**base, "_id": "fine", "updated_at": datetime.now(UTC)},
    ]
    client = clients.async_opensearch(ingest_settings)
    try:
        await client.indices.create(
            index=f"{ingest_settings.index_alias}-raw",
            body=index_templates.render("items", ingest_settings),
        )
        writer = BulkWriter(client, ingest_settings, f"{ingest_settings.index_alias}-raw")
        prepared = prepare(docs, embedder, ingest_settings, source="test", delete_invalid=False)
        stats = await write(prepared, writer, async_db, source="test", seen=4)
        assert stats.indexed == 1 and stats.dead_lettered == 3
        reasons = {
            d["doc_id"]: d["reason"] for d in mongo_db["dead_letters"].find({"source": "test"})
        }
        assert reasons["nan-pop"].startswith("popularity: not finite")
        assert reasons["inf-quality"].startswith("quality: not finite")
        assert reasons["nan-vector"].startswith("behaviour")
        stored = mongo_db["dead_letters"].find_one({"doc_id": "nan-pop"})
        assert stored["doc"]["popularity"] == "nan"  # kept, in a form every server stores
    finally:
        await client.close()


async def test_opensearch_rejections_are_dead_lettered(
    ingest_settings: Settings, mongo_db: Any, async_db: Any
) -> None:
    """Documents OpenSearch refuses (past validation): reason recorded, nothing dropped."""
    from opendisco import index_templates
    from opendisco.ingest._apply import Prepared

    index = f"{ingest_settings.index_alias}-strict"
    client = clients.async_opensearch(ingest_settings)
    try:
        await client.indices.create(
            index=index, body=index_templates.render("items", ingest_settings)
        )
        writer = BulkWriter(client, ingest_settings, index)
        good = {"id": "ok1", "title": "fine", "source_version": 1}
        prepared = Prepared(
            actions=[
                Action("index", "ok1", 1, good, raw={"_id": "ok1"}),
                Action(
                    "index", "os-type", 1, {"id": "os-type", "age": "old"}, raw={"_id": "os-type"}
                ),
                Action(
                    "index", "os-field", 1, {"id": "os-field", "nope": 1}, raw={"_id": "os-field"}
                ),
                Action(
                    "index",
                    "os-geo",
                    1,
                    {"id": "os-geo", "location": {"lat": 1000, "lon": 0}},
                    raw={"_id": "os-geo"},
                ),
                Action(
                    "index",
                    "os-term",
                    1,
                    {"id": "os-term", "gender": "g" * 40_000},
                    raw={"_id": "os-term"},
                ),
            ]
        )
        stats = await write(prepared, writer, async_db, source="os-test", seen=5)
        assert stats.indexed == 1 and stats.dead_lettered == 4
        letters = {d["doc_id"]: d for d in mongo_db["dead_letters"].find({"source": "os-test"})}
        assert set(letters) == {"os-type", "os-field", "os-geo", "os-term"}
        assert all(d["stage"] == "opensearch" for d in letters.values())
        assert "mapper_parsing_exception" in letters["os-type"]["reason"]
        assert "strict_dynamic_mapping_exception" in letters["os-field"]["reason"]
        # a newer write of the same id wins, an older one is a version conflict (acknowledged)
        newer = Prepared(actions=[Action("index", "ok1", 5, {**good, "source_version": 5})])
        older = Prepared(actions=[Action("index", "ok1", 3, {**good, "source_version": 3})])
        assert (await write(newer, writer, async_db, source="os-test", seen=1)).indexed == 1
        assert (await write(older, writer, async_db, source="os-test", seen=1)).conflicts == 1
        doc = await client.get(index=index, id="ok1")
        assert doc["_version"] == 5
    finally:
        await client.close()
