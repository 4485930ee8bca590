"""The exposure counters index (``<alias>-exposures``): its mapping and refresh settings, one
counter document per item plus the capped list (``signals._exposure``).

Why a separate index (the trade-off):

* Counting impressions on the item documents would re-index a document with two
  ``knn_vector`` fields per ``_update`` (Lucene has no in-place update: its vectors go back
  into the HNSW graphs), churn segments and fight the sync's external versioning
  (``source_version``): indexing cost multiplied by the traffic.
* Here each item has a tiny counter document (``item_id``, ``count``, ``cap``,
  ``window_start``; no vectors, no text) updated with a painless scripted upsert — cheap,
  atomic per document, and batched in one ``_bulk`` per ``record`` call.
* The price: a count is not a field of the item, so queries cannot sort or decay by it.
  Instead the store keeps one list document (``_capped``) of the ids whose count reached
  their cap in the current window; candidate queries exclude them with a ``terms`` lookup
  (``{"terms": {"id": {"index": ..., "id": "_capped", "path": "capped.ids"}}}``), which the
  engine resolves with a realtime GET — no refresh needed, one small fetch per query. The
  list is a hot document (updates to it serialise), bounded by ``index.max_terms_count``
  (65,536); capping is binary, and the reranker reads the counts (``signals.ExposureStore.read``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import RequestError

from opendisco._backend import backend_errors
from opendisco._cancel import raise_lost_cancel
from opendisco._exceptions import NotFound, SearchBackendError

from ._counting import MARK_PROPERTIES
from ._trending import TREND_PROPERTIES

__all__ = [
    "ADDED_PROPERTIES",
    "CAPPED_DOC_ID",
    "MAPPING",
    "REFRESH",
    "counters_body",
    "ensure_counters",
]

#: the capped list's document in the counters index
CAPPED_DOC_ID = "_capped"

PACED_PROPERTIES: dict[str, Any] = {
    "paced": {"type": "double"},
    "paced_at": {"type": "date", "format": "epoch_millis"},
}
#: when a counter document was last written (the writer's clock): the processes' copies of
#: the counters read what changed by it (``signals._exposure_mirror``)
TOUCHED_PROPERTIES: dict[str, Any] = {"touched_at": {"type": "date", "format": "epoch_millis"}}
#: explicit, so the shard refreshes while nobody searches it (``index.search.idle.after``):
#: non-realtime reads (:meth:`ExposureStore.read`) lag the writes by at most this
REFRESH: dict[str, Any] = {"refresh_interval": "1s"}
MAPPING: dict[str, Any] = {  # shards and replicas from settings (index_shards/_replicas)
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "item_id": {"type": "keyword", "ignore_above": 512},
            "count": {"type": "long"},
            "cap": {"type": "integer"},
            "window_start": {"type": "date", "format": "epoch_millis"},
            "paced": {"type": "double"},
            "paced_at": {"type": "date", "format": "epoch_millis"},
            "capped": {"type": "object", "enabled": False},  # {ids: [...], until: {id: ms}}
            **TREND_PROPERTIES,
            **TOUCHED_PROPERTIES,
            **MARK_PROPERTIES,
        },
    },
}
#: fields added after the first release: put into an existing index's mapping by ``ensure``
#: (a no-op when present)
ADDED_PROPERTIES: dict[str, Any] = {
    **TREND_PROPERTIES,
    **PACED_PROPERTIES,
    **TOUCHED_PROPERTIES,
    **MARK_PROPERTIES,
}


def counters_body(shards: int, replicas: int) -> dict[str, Any]:
    """Pure: the index creation body (settings ``index_shards`` / ``index_replicas``)."""
    shape = {"number_of_shards": shards, "number_of_replicas": replicas, **REFRESH}
    return {"settings": {"index": shape}, **MAPPING}


async def ensure_counters(client: AsyncOpenSearch, index: str, shards: int, replicas: int) -> None:
    """Create the counters index ``index`` (idempotent), add the fields of later releases to
    an older one, and wait until its shard answers the cap list's realtime GET."""
    with backend_errors(f"cannot create {index}"):
        try:
            if not await client.indices.exists(index=index):
                await client.indices.create(index=index, body=counters_body(shards, replicas))
        except RequestError as exc:
            if "resource_already_exists" not in str(exc):
                raise
        # indices created before live trending, pacing and the copies: add their fields
        # (a no-op when present)
        await client.indices.put_mapping(index=index, body={"properties": ADDED_PROPERTIES})
        await client.indices.put_settings(index=index, body={"index": REFRESH})
    # a concurrent creator may have returned before the primary started: a terms lookup
    # against a RECOVERING shard fails every candidate source, so wait for it
    with backend_errors(f"{index} did not become available"):
        await client.cluster.health(index=index, wait_for_status="yellow", request_timeout=30)
    await _until_gettable(client, index)


async def _until_gettable(client: AsyncOpenSearch, index: str, attempts: int = 50) -> None:
    """Yellow health can precede the shard accepting realtime GETs (which the terms lookup
    uses) by a few ms: poll a GET of the cap list until the shard answers (404 is an answer)."""
    last: Exception | None = None
    for _ in range(attempts):
        raise_lost_cancel()  # a cancel the driver swallowed: not 50 more attempts
        try:
            with backend_errors("reading the cap list failed", not_found="no cap list yet"):
                await client.get(index=index, id=CAPPED_DOC_ID)
            return
        except NotFound:
            return
        except SearchBackendError as exc:
            last = exc
            await asyncio.sleep(0.1)
    raise SearchBackendError(f"{index} did not become readable: {last}")
