"""Embedder: same vectors as the bare model, content-hash cache persisted in MongoDB."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from opendisco import Settings
from opendisco.ingest import CACHE_COLLECTION, Embedder, MongoCache


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
    assert np.allclose(np.frombuffer(stored["v"], dtype=np.float32), got[1])
    fresh = Embedder(ingest_settings, model)  # new process-level cache: served from MongoDB
    try:
        again = fresh.encode(texts)
        assert fresh.encoded == 0 and fresh.hits == 7
        assert np.array_equal(again, got)
    finally:
        fresh.close()


class _CountingStore:
    """A MongoCache that counts per-key lookups (the path prefetch exists to avoid)."""

    def __init__(self, inner: MongoCache) -> None:
        self.inner = inner
        self.lookups: list[int] = []

    def get_many(self, keys: Any) -> dict[str, np.ndarray]:
        self.lookups.append(len(keys))
        return self.inner.get_many(keys)

    def put_many(self, vectors: Any) -> None:
        self.inner.put_many(vectors)

    def scan(self, page_size: int = 5_000) -> Any:
        return self.inner.scan(page_size)


def test_prefetch_scans_cache_in_keyset_pages(
    ingest_settings: Settings, model: Any, mongo_db: Any
) -> None:
    coll = mongo_db[f"cache_probe_{ingest_settings.items_collection}"]
    try:
        texts = [f"prefetch probe {i}: hiking, jazz and board games" for i in range(23)]
        writer = Embedder(
            ingest_settings, model, cache=MongoCache(coll, ingest_settings.embedding_dim)
        )
        want = writer.encode(texts)
        assert writer.encoded == 23 and coll.count_documents({}) == 23

        pages = list(MongoCache(coll, ingest_settings.embedding_dim).scan(5))
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        keys = [k for p in pages for k in p]
        assert keys == sorted(writer.keys(texts)) and len(set(keys)) == 23

        small = ingest_settings.model_copy(update={"embed_cache_prefetch_page": 100})
        store = _CountingStore(MongoCache(coll, ingest_settings.embedding_dim))
        partial = Embedder(small, model, cache=store)
        assert partial.prefetch(10) == 10 and len(partial.memory) == 10
        got = partial.encode(texts)
        assert store.lookups == [13]  # only the keys not prefetched go to the store
        assert partial.encoded == 0 and np.array_equal(got, want)

        store = _CountingStore(MongoCache(coll, ingest_settings.embedding_dim))
        full = Embedder(small, model, cache=store)
        assert full.prefetch() == 23 and full.prefetched == 23
        got = full.encode(texts)
        assert store.lookups == [] and full.encoded == 0 and full.hits == 23
        assert np.array_equal(got, want)

        off = Embedder(
            ingest_settings.model_copy(update={"embed_cache_prefetch_max": 0}), model, cache=store
        )
        assert off.prefetch() == 0 and len(off.memory) == 0
        assert (
            Embedder(ingest_settings, model, persist=False).prefetch() == 0
        )  # no persistent store
    finally:
        coll.drop()
