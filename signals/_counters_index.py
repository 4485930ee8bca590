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

from typing import Any

from ._counting import MARK_PROPERTIES
from ._trending import TREND_PROPERTIES

__all__ = ["ADDED_PROPERTIES", "MAPPING", "REFRESH"]

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
