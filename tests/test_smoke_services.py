"""Foundation smoke: index from index_templates/ with a lucene knn_vector, knn + BM25 hits."""

from __future__ import annotations

import math
import random
from typing import Any

from opensearchpy import helpers

from opendisco import Settings, index_templates
from opendisco.services import services

WORDS = ["river", "mountain", "jazz", "hiking", "coffee", "poetry", "chess", "surfing", "opera"]


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def test_services_report_versions(settings: Settings) -> None:
    status = {svc.name: svc.status() for svc in services(settings)}
    assert status["opensearch"].healthy, status["opensearch"].detail
    assert "opensearch-knn" in status["opensearch"].detail
    assert status["ferretdb"].healthy, status["ferretdb"].detail


def test_knn_and_bm25_top_hits(settings: Settings, os_client: Any) -> None:
    index = f"{settings.index_alias}-smoke"
    body = index_templates.render("items", settings)
    assert body["mappings"]["properties"]["embedding"]["method"]["engine"] == "lucene"
    os_client.indices.create(index=index, body=body)
    rng = random.Random(7)
    dim = settings.embedding_dim
    docs = []
    for i in range(100):
        vec = _unit([rng.gauss(0, 1) for _ in range(dim)])
        words = rng.sample(WORDS, 3)
        docs.append({"id": f"i{i}", "title": f"item {i} " + " ".join(words), "embedding": vec})
    # one document with a unique word, one with a vector we will query near
    docs[42]["description"] = "a unique zeppelin enthusiast"
    ok, errors = helpers.bulk(
        os_client,
        ({"_index": index, "_id": d["id"], "_source": d} for d in docs),
        refresh=True,
        raise_on_error=False,
    )
    assert ok == 100, errors
    probe = [x + 0.01 for x in docs[17]["embedding"]]
    knn = os_client.search(
        index=index,
        body={"size": 3, "query": {"knn": {"embedding": {"vector": probe, "k": 3}}}},
    )
    assert knn["hits"]["hits"][0]["_id"] == "i17"
    bm25 = os_client.search(
        index=index,
        body={
            "size": 3,
            "query": {"multi_match": {"query": "zeppelins", "fields": ["title", "description"]}},
        },
    )
    assert [h["_id"] for h in bm25["hits"]["hits"]] == ["i42"]


async def test_async_round_trip(async_db: Any) -> None:
    coll = async_db["smoke"]
    await coll.insert_one({"_id": "a", "n": 1, "tags": ["x", "y"]})
    await coll.update_one({"_id": "a"}, {"$inc": {"n": 1}})
    doc = await coll.find_one({"_id": "a"})
    assert doc == {"_id": "a", "n": 2, "tags": ["x", "y"]}
    await coll.drop()


def test_id_lookups_use_the_id_index(mongo_db: Any) -> None:
    """Point and ``$in`` reads by ``_id`` are index searches (FerretDB: the build patch in
    opendisco.services._ferretdb_patches; on MongoDB: IDHACK / the _id index)."""
    coll = mongo_db["id_lookup_probe"]
    coll.insert_many([{"_id": f"p{i}", "n": i} for i in range(300)])
    by_id = coll.find_one({"_id": "p123"})
    assert by_id is not None and by_id["n"] == 123
    got = sorted(d["n"] for d in coll.find({"_id": {"$in": ["p7", "p250", "nope", "p7"]}}))
    assert got == [7, 250]
    # the handler still applies the whole filter to the pushed-down superset
    assert [d["n"] for d in coll.find({"_id": {"$in": ["p1", "p2"]}, "n": 2})] == [2]
    for flt in ({"_id": "p123"}, {"_id": {"$in": ["p1", "p2"]}}):
        plan = mongo_db.command("explain", {"find": coll.name, "filter": flt})
        if "ferretdbVersion" not in plan.get("serverInfo", {}):
            continue  # MongoDB: nothing of ours to check
        text = str(plan["queryPlanner"])
        assert "USING INDEX" in text and "SCAN" not in text, text
