"""Batched sentence-transformers encoding behind a content-hash cache.

The cache key is ``sha256(model name, text)``; vectors are stored in the MongoDB collection
``embedding_cache`` as ``{_id: key, v: <BSON float32 vector>}`` (``_stored``: the dtype is
tagged, the dimension is the length; entries of the first form, raw float32 bytes, still
read) with an in-process LRU in front, so an unchanged text is never encoded twice — not by
reindex, not by sync, not across processes. An entry that does not hold a finite unit vector
of ``embedding_dim`` dimensions (corrupt, or written under another dimension setting) is a
miss: the text is encoded again and the entry replaced, never indexed as it is.

Lookups are one ``{_id: {$in: keys}}`` per batch (≤ 1,000 keys per query): an index search on
MongoDB and on our patched FerretDB build (``services/_ferretdb.py`` pushes ``_id $in`` down),
so a warm build costs one indexed lookup per document — linear in the collection size, where
the earlier whole-cache keyset prefetch was quadratic on an unpatched FerretDB.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pymongo.errors import BulkWriteError

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco._stored import read_vector, store_vector

from ._document import text_key

__all__ = [
    "CACHE_COLLECTION",
    "Embedder",
    "EmbeddingCache",
    "MemoryCache",
    "MongoCache",
    "usable",
]

CACHE_COLLECTION = "embedding_cache"
MEMORY_ITEMS = 200_000  # in-process LRU entries (~310 MB of 384-d float32 at most)


class EmbeddingCache(Protocol):
    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]: ...

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None: ...


class MemoryCache:
    """Bounded LRU of key → float32 vector (thread-safe)."""

    def __init__(self, max_items: int = 200_000) -> None:
        self.max_items = max_items
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            out = {}
            for k in keys:
                v = self._data.get(k)
                if v is not None:
                    self._data.move_to_end(k)
                    out[k] = v
            return out

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        with self._lock:
            self._data.update(vectors)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def usable(vec: np.ndarray | None) -> bool:
    """A cached vector fit to index: finite and of unit length (``encode`` normalises)."""
    if vec is None or not np.isfinite(vec).all():
        return False
    return abs(float(np.dot(vec, vec)) - 1.0) < 1e-3


class MongoCache:
    """Persistent cache in a (synchronous pymongo) collection; vectors as BSON float32 vectors."""

    def __init__(self, collection: Any, dim: int) -> None:
        self.collection = collection
        self.dim = dim

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The usable entries among ``keys`` (one ``_id $in`` per 1,000 keys, only ``v``)."""
        out: dict[str, np.ndarray] = {}
        with backend_errors("embedding cache read failed"):
            for i in range(0, len(keys), 1000):
                chunk = list(keys[i : i + 1000])
                for doc in self.collection.find({"_id": {"$in": chunk}}, {"v": 1}):
                    vec = read_vector(doc.get("v"), self.dim)
                    if usable(vec):
                        out[doc["_id"]] = vec
        return out

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        if not vectors:
            return
        docs = [{"_id": k, "v": store_vector(v)} for k, v in vectors.items()]
        with backend_errors("embedding cache write failed"):
            try:
                # plain inserts (no upsert: FerretDB holds a cursor per update op)
                self.collection.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors):
                    raise
                # a duplicate key: another process stored the text first (then this rewrites
                # the same vector), or the entry there is unusable (then this replaces it)
                for e in errors:
                    self.collection.replace_one({"_id": docs[e["index"]]["_id"]}, docs[e["index"]])


class Embedder:
    """``encode(texts) -> (n, dim) float32``, normalised, cached by content hash.

    ``persist=True`` (default) keeps the cache in MongoDB ``embedding_cache`` of
    ``settings.mongo_db``; the model is loaded lazily on the first cache miss.
    """

    def __init__(
        self,
        settings: Settings,
        model: Any | None = None,
        *,
        cache: EmbeddingCache | None = None,
        persist: bool = True,
    ) -> None:
        self.settings = settings
        self._model = model
        self.model_name = Path(settings.model_path or "all-MiniLM-L6-v2").name
        self.memory = MemoryCache(MEMORY_ITEMS)
        self._mongo_client: Any | None = None
        if cache is None and persist:
            self._mongo_client = clients.mongo(settings)
            coll = self._mongo_client[settings.mongo_db][CACHE_COLLECTION]
            cache = MongoCache(coll, settings.embedding_dim)
        self.store = cache
        self.encoded = 0  # texts that went through the model
        self.hits = 0  # texts served from a cache
        self.encode_seconds = 0.0
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = clients.load_model(self.settings)
        return self._model

    def close(self) -> None:
        if self._mongo_client is not None:
            self._mongo_client.close()
            self._mongo_client = None

    def keys(self, texts: Iterable[str]) -> list[str]:
        return [text_key(self.model_name, t) for t in texts]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 vectors, from a cache where possible."""
        return self.encode_counted(texts)[0]

    def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int, int]:
        """``(vectors, encoded, cache_hits)`` of this call (safe from several threads)."""
        texts = list(texts)
        dim = self.settings.embedding_dim
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out, 0, 0
        keys = self.keys(texts)
        found = self.memory.get_many(keys)
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing and self.store is not None:
            stored = self.store.get_many(missing)
            self.memory.put_many(stored)
            found.update(stored)
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in found:
                todo.setdefault(k, t)
        seconds = 0.0
        if todo:
            t0 = time.perf_counter()
            vecs = self.model.encode(
                list(todo.values()),
                batch_size=self.settings.embed_batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32, copy=False)
            seconds = time.perf_counter() - t0
            fresh = dict(zip(todo.keys(), vecs, strict=True))
            self.memory.put_many(fresh)
            if self.store is not None:
                self.store.put_many(fresh)
            found.update(fresh)
        hits = len(texts) - len(todo)
        with self._lock:
            self.encoded += len(todo)
            self.hits += hits
            self.encode_seconds += seconds
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out, len(todo), hits
