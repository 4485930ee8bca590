"""Vectors stored in MongoDB as BSON float32 vectors: the older forms still read, bad entries
are re-encoded (cache) or dead-lettered (items), never indexed wrong."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from bson.binary import Binary, BinaryVectorDtype

from opendisco import Settings, clients
from opendisco._exceptions import DocumentInvalid
from opendisco.ingest import (
    CACHE_COLLECTION,
    Embedder,
    generate_marketplace,
    read_vector,
    reindex,
    store_vector,
    text_key,
    validate_item,
    vector_values,
    write_behaviour,
    write_sample,
)

GOOD = {
    "_id": "v1",
    "kind": "profile",
    "owner_id": "m-v1",
    "title": "Quiet reader",
    "version": 1,
    "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
}


def test_store_vector_is_the_bson_float32_vector_and_reads_back() -> None:
    vec = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    stored = store_vector(vec)
    assert stored == Binary.from_vector(vec.tolist(), BinaryVectorDtype.FLOAT32)
    assert np.array_equal(read_vector(stored, 32), vec)
    assert read_vector(stored, 31) is None  # another dimension: not this vector
    # the embedding cache's first form (raw float32 bytes, generic subtype) still reads
    assert np.array_equal(read_vector(vec.tobytes(), 32), vec)
    assert read_vector(Binary(vec.tobytes(), 0), 32) is not None
    assert read_vector(vec.tobytes()[:-1], None) is None  # not whole float32s
    int8 = Binary.from_vector([1, 2, 3, 4], BinaryVectorDtype.INT8)
    assert read_vector(int8, None) is None  # another dtype
    assert read_vector(Binary(vec.tobytes(), 5), 32) is None  # another subtype (MD5)
    assert read_vector([0.1] * 32, 32) is None  # not bytes
    assert vector_values(np.asarray([0.1, -0.25], np.float32)) == [0.1, -0.25]


def test_items_behaviour_as_vector_or_list() -> None:
    vec = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    from_binary = validate_item(dict(GOOD, behaviour=store_vector(vec)), behaviour_dim=32)
    from_list = validate_item(dict(GOOD, behaviour=vector_values(vec)), behaviour_dim=32)
    assert from_binary["behaviour"] == from_list["behaviour"]
    assert np.array_equal(np.asarray(from_binary["behaviour"], np.float32), vec)
    bad = {
        "dims": store_vector(vec[:31]),
        "nan": store_vector(np.full(32, np.nan, np.float32)),
        "zero": store_vector(np.zeros(32, np.float32)),
        "raw_bytes": Binary(vec.tobytes(), 0),  # untagged bytes are not a vector in items
        "int8": Binary.from_vector([1] * 32, BinaryVectorDtype.INT8),
    }
    for value in bad.values():
        with pytest.raises(DocumentInvalid, match=r"^behaviour"):
            validate_item(dict(GOOD, behaviour=value), behaviour_dim=32)


def test_cache_reads_old_form_and_reencodes_bad_entries(
    ingest_settings: Settings, model: Any, mongo_db: Any
) -> None:
    texts = [f"stored-vector probe {i}: tango on sundays" for i in range(7)]
    want = model.encode(texts, normalize_embeddings=True).astype(np.float32)
    emb = Embedder(ingest_settings, model)
    keys = emb.keys(texts)
    dim = ingest_settings.embedding_dim
    coll = mongo_db[CACHE_COLLECTION]
    coll.delete_many({"_id": {"$in": keys}})
    coll.insert_many(
        [
            {"_id": keys[0], "v": want[0].tobytes()},  # the first form: raw float32 bytes
            {"_id": keys[1], "v": store_vector(want[1])},  # the tagged form
            {"_id": keys[2], "v": store_vector(np.full(dim, np.nan, np.float32))},  # corrupt
            {"_id": keys[3], "v": store_vector(want[3][: dim // 2])},  # another dimension
            {"_id": keys[4], "v": store_vector(want[4] * 3)},  # not a unit vector
            {"_id": keys[5], "v": want[5].tolist()},  # an array of doubles
            {"_id": keys[6]},  # no vector
        ]
    )
    try:
        got, encoded, hits = emb.encode_counted(texts)
    finally:
        emb.close()
    assert (encoded, hits) == (5, 2)  # the two good entries served, the five bad re-encoded
    assert np.allclose(got, want, atol=1e-5)
    for key, vec in zip(keys[2:], want[2:], strict=True):  # replaced by the tagged form
        stored = coll.find_one({"_id": key})["v"]
        assert stored.subtype == 9 and np.allclose(read_vector(stored, dim), vec, atol=1e-5)
    again = Embedder(ingest_settings, model)
    try:
        _, encoded, hits = again.encode_counted(texts)
    finally:
        again.close()
    assert (encoded, hits) == (0, 7)
    assert text_key(again.model_name, texts[0]) == keys[0]


async def test_reindex_indexes_stored_vectors_and_lists_alike(
    ingest_settings: Settings, embedder: Embedder, mongo_db: Any
) -> None:
    items, _ = generate_marketplace(40, seed=5)
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((40, ingest_settings.behaviour_dim)).astype(np.float32)
    for i, (item, vec) in enumerate(zip(items, vecs, strict=True)):
        item["behaviour"] = store_vector(vec) if i % 2 else vector_values(vec)
    write_sample(ingest_settings, items[:20])
    # the rest gets its behaviour the way `opendisco train` writes it
    bare = [{k: v for k, v in d.items() if k != "behaviour"} for d in items[20:]]
    write_sample(ingest_settings, bare)
    db = clients.mongo_async(ingest_settings)
    try:
        written = await write_behaviour(
            db[ingest_settings.mongo_db],
            ingest_settings,
            {d["_id"]: vecs[20 + i] for i, d in enumerate(items[20:])},
        )
    finally:
        await db.close()
    assert written == 20
    item = mongo_db[ingest_settings.items_collection].find_one({"_id": items[25]["_id"]})
    assert "behaviour" not in item  # the app's document is not touched
    stored = mongo_db[ingest_settings.behaviour_collection].find_one({"_id": items[25]["_id"]})
    assert stored["behaviour"].subtype == 9
    report = await reindex(ingest_settings, embedder=embedder)
    assert report.indexed == 40 and report.dead_lettered == 0
    osc = clients.opensearch(ingest_settings)
    try:
        docs = osc.mget(index=ingest_settings.index_alias, body={"ids": [d["_id"] for d in items]})
    finally:
        osc.close()
    for doc, vec in zip(docs["docs"], vecs, strict=True):
        assert doc["_source"]["behaviour"] == vector_values(vec)
