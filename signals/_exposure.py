"""Exposure counters and the in-engine cap list (``<alias>-exposures``).

Why a separate index (the trade-off):

* Counting impressions on the item documents themselves would be a partial update of a
  document that carries two ``knn_vector`` fields. Lucene has no in-place update: every
  ``_update`` re-indexes the whole document, re-inserting its vectors into the HNSW graphs
  (the expensive part of indexing), churns segments, and fights the sync's external
  versioning (``source_version``) for the same ``_id``. Impressions arrive far more often
  than content changes, so that would multiply indexing cost by the traffic.
* Here each item has a tiny counter document (``item_id``, ``count``, ``cap``,
  ``window_start``; no vectors, no text) updated with a painless scripted upsert — cheap,
  atomic per document, and batched in one ``_bulk`` per ``record`` call.
* The price: a count is not a field of the item, so queries cannot sort or decay by it.
  Instead the store keeps one list document (``_capped``) of the ids whose count reached
  their cap in the current window; candidate queries exclude them with a ``terms`` lookup
  (``{"terms": {"id": {"index": ..., "id": "_capped", "path": "capped.ids"}}}``), which the
  engine resolves with a realtime GET — no refresh needed, one small fetch per query. The
  list is a hot document (updates to it serialise) and is bounded by ``index.max_terms_count``
  (65,536 by default); capping is binary (in or out), and the reranker reads exact counts via
  :meth:`ExposureStore.counts` when it wants a softer demotion.

Windows are tumbling per item: the first impression after ``exposure_window_hours`` resets the
counter; capped ids carry their window's end in the list document and fall out of it on the
next :meth:`ExposureStore.record` or :meth:`ExposureStore.sweep` after that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import NotFoundError, OpenSearchException, RequestError

from opendisco._backend import backend_errors
from opendisco._exceptions import InvalidInput, SearchBackendError
from opendisco._settings import Settings

__all__ = ["CAPPED_DOC_ID", "ExposureStore", "capped_lookup", "exposure_index"]

CAPPED_DOC_ID = "_capped"
CAPPED_PATH = "capped.ids"

_MAPPING: dict[str, Any] = {  # shards and replicas from settings (index_shards/_replicas)
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "item_id": {"type": "keyword", "ignore_above": 512},
            "count": {"type": "long"},
            "cap": {"type": "integer"},
            "window_start": {"type": "date", "format": "epoch_millis"},
            "capped": {"type": "object", "enabled": False},  # {ids: [...], until: {id: ms}}
        },
    },
}

# one counter document per item: tumbling window, then add; report whether it is at its cap
_COUNT_SCRIPT = """
if (ctx._source.window_start == null || params.now - ctx._source.window_start >= params.window) {
  ctx._source.window_start = params.now;
  ctx._source.count = 0;
}
ctx._source.count += params.n;
ctx._source.cap = params.cap;
"""

# the list document: add newly capped ids with their window end, drop expired ones
_CAPPED_SCRIPT = """
if (ctx._source.capped == null) { ctx._source.capped = ['ids': [], 'until': [:]]; }
Map until = ctx._source.capped.until;
for (entry in params.add.entrySet()) { until.put(entry.getKey(), entry.getValue()); }
until.entrySet().removeIf(e -> e.getValue() <= params.now);
ctx._source.capped.ids = new ArrayList(until.keySet());
"""


def exposure_index(settings: Settings) -> str:
    return f"{settings.index_alias}-exposures"


def capped_lookup(settings: Settings) -> dict[str, Any]:
    """The ``terms`` lookup clause that matches capped items (put it under ``must_not``)."""
    return {
        "terms": {
            "id": {"index": exposure_index(settings), "id": CAPPED_DOC_ID, "path": CAPPED_PATH}
        }
    }


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class ExposureStore:
    """Impression counters per item and the ``capped`` list the candidate queries exclude."""

    def __init__(self, client: AsyncOpenSearch, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.index = exposure_index(settings)
        self.window_ms = int(settings.exposure_window_hours * 3_600_000)

    def _body(self) -> dict[str, Any]:
        shape = {
            "number_of_shards": self.settings.shards,
            "number_of_replicas": self.settings.replicas,
        }
        return {"settings": {"index": shape}, **_MAPPING}

    async def ensure(self) -> None:
        """Create the counters index (idempotent)."""
        with backend_errors(f"cannot create {self.index}"):
            try:
                if not await self.client.indices.exists(index=self.index):
                    await self.client.indices.create(index=self.index, body=self._body())
            except RequestError as exc:
                if "resource_already_exists" not in str(exc):
                    raise
        # a concurrent creator may have returned before the primary started: a terms lookup
        # against a RECOVERING shard fails every candidate source, so wait for it
        with backend_errors(f"{self.index} did not become available"):
            await self.client.cluster.health(
                index=self.index, wait_for_status="yellow", request_timeout=30
            )
        await self._until_gettable()

    async def _until_gettable(self, attempts: int = 50) -> None:
        """Yellow health can precede the shard accepting realtime GETs (which the terms
        lookup uses) by a few ms: poll a GET until the shard answers (404 is an answer)."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                await self.client.get(index=self.index, id="_capped")
                return
            except NotFoundError:
                return
            except OpenSearchException as exc:
                last = exc
                await asyncio.sleep(0.1)
        raise SearchBackendError(f"{self.index} did not become readable: {last}")

    async def _caps(self, ids: list[str]) -> dict[str, int]:
        """Each item's own ``exposure_cap`` (one mget of just that field), else the default."""
        caps = dict.fromkeys(ids, self.settings.exposure_default_cap)
        with backend_errors("exposure caps lookup failed"):
            try:
                resp = await self.client.mget(
                    index=self.settings.index_alias,
                    body={"ids": ids},
                    params={"_source_includes": "exposure_cap", "realtime": "true"},
                )
            except NotFoundError:
                return caps  # no items index yet: defaults
        for doc in resp.get("docs", []):
            cap = (doc.get("_source") or {}).get("exposure_cap")
            if doc.get("found") and isinstance(cap, int) and cap > 0:
                caps[doc["_id"]] = cap
        return caps

    async def record(self, counts: Mapping[str, int], now: datetime | None = None) -> list[str]:
        """Add impressions per item id; returns the ids that are capped after this call.

        One ``mget`` (caps), one ``_bulk`` of scripted upserts (counters), and one scripted
        update of the capped list when something reached its cap. Item documents are never
        written.
        """
        batch = {str(k): int(v) for k, v in counts.items() if int(v) != 0}
        if any(v < 0 for v in batch.values()):
            raise InvalidInput("impression counts must be >= 0")
        now_ms = _ms(now or datetime.now(UTC))
        if not batch:
            return []
        ids = sorted(batch)
        caps = await self._caps(ids)
        body: list[dict[str, Any]] = []
        for item_id in ids:
            params = {
                "n": batch[item_id],
                "cap": caps[item_id],
                "now": now_ms,
                "window": self.window_ms,
            }
            body.append({"update": {"_index": self.index, "_id": item_id, "retry_on_conflict": 5}})
            body.append(
                {
                    "script": {"lang": "painless", "source": _COUNT_SCRIPT, "params": params},
                    "upsert": {
                        "item_id": item_id,
                        "count": 0,
                        "cap": caps[item_id],
                        "window_start": now_ms,
                    },
                    "scripted_upsert": True,
                    "_source": ["count", "cap", "window_start"],
                }
            )
        with backend_errors("exposure bulk update failed"):
            resp = await self.client.bulk(body=body)
        add: dict[str, int] = {}
        errors = []
        for item in resp.get("items", []):
            res = item.get("update", {})
            if "error" in res:
                errors.append(f"{res.get('_id')}: {res['error']}")
                continue
            src = (res.get("get") or {}).get("_source") or {}
            if src.get("count", 0) >= src.get("cap", self.settings.exposure_default_cap):
                add[res["_id"]] = int(src.get("window_start", now_ms)) + self.window_ms
        if errors:
            raise SearchBackendError(f"exposure updates failed: {errors[:3]}")
        return await self._update_capped(add, now_ms)

    async def sweep(self, now: datetime | None = None) -> list[str]:
        """Drop capped ids whose window ended; returns the capped ids left."""
        return await self._update_capped({}, _ms(now or datetime.now(UTC)))

    async def _update_capped(self, add: Mapping[str, int], now_ms: int) -> list[str]:
        with backend_errors("capped list update failed"):
            resp = await self.client.update(
                index=self.index,
                id=CAPPED_DOC_ID,
                body={
                    "script": {
                        "lang": "painless",
                        "source": _CAPPED_SCRIPT,
                        "params": {"add": dict(add), "now": now_ms},
                    },
                    "upsert": {"capped": {"ids": [], "until": {}}},
                    "scripted_upsert": True,
                    "_source": [CAPPED_PATH],
                },
                params={"retry_on_conflict": 10},
            )
        src = (resp.get("get") or {}).get("_source") or {}
        return sorted((src.get("capped") or {}).get("ids") or [])

    async def capped(self) -> list[str]:
        """The ids the candidate queries currently exclude."""
        with backend_errors("capped list read failed"):
            try:
                doc = await self.client.get(index=self.index, id=CAPPED_DOC_ID)
            except NotFoundError:
                return []
        return sorted(((doc.get("_source") or {}).get("capped") or {}).get("ids") or [])

    async def counts(self, ids: Iterable[str], now: datetime | None = None) -> dict[str, int]:
        """Impressions in the current window per id (0 for unknown ids or expired windows)."""
        wanted = [str(i) for i in ids]
        out = dict.fromkeys(wanted, 0)
        if not wanted:
            return out
        now_ms = _ms(now or datetime.now(UTC))
        with backend_errors("exposure counts lookup failed"):
            try:
                resp = await self.client.mget(index=self.index, body={"ids": wanted})
            except NotFoundError:
                return out
        for doc in resp.get("docs", []):
            src = doc.get("_source") or {}
            if doc.get("found") and now_ms - int(src.get("window_start", 0)) < self.window_ms:
                out[doc["_id"]] = int(src.get("count", 0))
        return out
