"""Embedder: same vectors as the bare model, content-hash cache persisted in MongoDB."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from opendisco import Settings
from opendisco.ingest import CACHE_COLLECTION, Embedder


def test_encode_matches_model_and_caches(ns: Settings, model: Any, mongo_db: Any) -> None:
    texts = [f"embedder probe {i}: quiet cafes and long walks" for i in range(6)]
    texts.append(texts[0])  # a duplicate inside one call is encoded once
    emb = Embedder(ns, model)
    try:
        got = emb.encode(texts)
        want = model.encode(texts, normalize_embeddings=True)
        assert got.shape == (7, ns.embedding_dim) and got.dtype == np.float32
        assert np.allclose(got, want, atol=1e-5)
        assert emb.encoded == 6
        emb.encode(texts)
        assert emb.encoded == 6  # memory hits
    finally:
        emb.close()
    key = hashlib.sha256(f"{emb.model_name}\x00{texts[1]}".encode()).hexdigest()
    stored = mongo_db[CACHE_COLLECTION].find_one({"_id": key})
    assert np.allclose(np.frombuffer(stored["v"], dtype=np.float32), got[1])
    fresh = Embedder(ns, model)  # new process-level cache: served from MongoDB
    try:
        again = fresh.encode(texts)
        assert fresh.encoded == 0 and fresh.hits == 7
        assert np.array_equal(again, got)
    finally:
        fresh.close()
