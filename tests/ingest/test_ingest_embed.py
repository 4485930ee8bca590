"""Embedder: same vectors as the bare model, content-hash cache persisted in MongoDB."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from opendisco import Settings
from opendisco.ingest import CACHE_COLLECTION, Embedder, MongoCache, read_vector


def test_encode_matches_model_and_caches(
    ingest_settings: Settings, model: Any, mongo_db: Any
) -> None:
    texts = [f"embedder probe {i}: quiet cafes and long walks" for i in range(6)]
    texts.append(texts[0])  # a duplicate inside one call is encoded once
    emb = Embedder(ingest_settings, model)
    try:
        got = emb.encode(texts)
        want = model.encode(texts, normalize_embeddings=True)
        assert got.shape == (7, ingest_settings.embedding_dim) and got.dtype == np.float32
        assert np.allclose(got, want, atol=1e-5)
        assert emb.encoded == 6
        emb.encode(texts)
        assert emb.encoded == 6  # memory hits
    finally:
        emb.close()
    key = hashlib.sha256(f"{emb.model_name}\x00{texts[1]}".encode()).hexdigest()
    stored = mongo_db[CACHE_COLLECTION].find_one({"_id": key})
    assert np.allclose(read_vector(stored["v"], ingest_settings.embedding_dim), got[1])
    fresh = Embedder(ingest_settings, model)  # new process-level cache: served from MongoDB
    try:
        again = fresh.encode(texts)
        assert fresh.encoded == 0 and fresh.hits == 7
        assert np.array_equal(again, got)
    finally:
        fresh.close()


class _CountingStore:
    """A MongoCache that records the size of each lookup."""

    def __init__(self, inner: MongoCache) -> None:
        self.inner = inner
        self.lookups: list[int] = []

    def get_many(self, keys: Any) -> dict[str, np.ndarray]:
        self.lookups.append(len(keys))
        return self.inner.get_many(keys)

    def put_many(self, vectors: Any) -> None:
        self.inner.put_many(vectors)


def test_warm_lookup_is_one_indexed_in_query_per_batch(
    ingest_settings: Settings, model: Any, mongo_db: Any
) -> None:
    coll = mongo_db[f"cache_probe_{ingest_settings.items_collection}"]
    try:
        texts = [f"lookup probe {i}: hiking, jazz and board games" for i in range(23)]
        writer = Embedder(
            ingest_settings, model, cache=MongoCache(coll, ingest_settings.embedding_dim)
        )
        want = writer.encode(texts)
        assert writer.encoded == 23 and coll.count_documents({}) == 23

        store = _CountingStore(MongoCache(coll, ingest_settings.embedding_dim))
        warm = Embedder(ingest_settings, model, cache=store)  # a new process: empty memory
        got, encoded, hits = warm.encode_counted(texts[:10])
        assert store.lookups == [10] and (encoded, hits) == (0, 10)
        got = warm.encode(texts)
        assert store.lookups == [10, 13]  # one lookup per batch, only the keys not in memory
        assert warm.encoded == 0 and warm.hits == 33 and np.array_equal(got, want)

        # the lookup is an index search, not a scan of the cache (FerretDB: patched pushdown)
        plan = mongo_db.command(
            "explain",
            {"find": coll.name, "filter": {"_id": {"$in": warm.keys(texts)}}},
            verbosity="queryPlanner",
        )
        if "ferretdbVersion" in plan.get("serverInfo", {}):
            assert plan["filterPushdown"] and "USING INDEX" in str(plan["queryPlanner"]), plan
        else:
            assert any(s in str(plan) for s in ("IXSCAN", "IDHACK", "EXPRESS")), plan
    finally:
        coll.drop()
