"""FeatureStore shared by concurrent requests: one vector fetch per id, same features."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from opendisco import Settings
from opendisco.rerank import FeatureStore


async def test_concurrent_lookups_share_one_vector_fetch(
    clustered_settings: Settings,
    clustered_os: Any,
    clustered_db: Any,
    clustered_items: list[dict[str, Any]],
) -> None:
    ids = [it["id"] for it in clustered_items]
    reference = await FeatureStore(clustered_settings, clustered_os, clustered_db).lookup(ids)
    mgets: list[str] = []
    original = clustered_os.transport.perform_request

    async def counting(method: str, url: str, *a: Any, **kw: Any) -> Any:
        if url.endswith("/_mget") and url.startswith(f"/{clustered_settings.index_alias}/"):
            mgets.append(url)
        return await original(method, url, *a, **kw)

    clustered_os.transport.perform_request = counting
    try:
        store = FeatureStore(clustered_settings, clustered_os, clustered_db)  # cold cache
        half = ids[: len(ids) // 2]
        got = await asyncio.gather(*(store.lookup(ids) for _ in range(6)), store.lookup(half))
    finally:
        clustered_os.transport.perform_request = original
    # the first request fetches, the others await it: one read of the packed vectors, and
    # (this catalogue is indexed raw, without ingest's packing) one of the float arrays
    assert len(mgets) == 2, mgets
    assert not store._inflight
    for feats in got[:-1]:
        assert np.array_equal(feats.content, reference.content)
        assert np.array_equal(feats.behaviour, reference.behaviour)
    assert np.array_equal(got[-1].content, reference.content[: len(half)])
