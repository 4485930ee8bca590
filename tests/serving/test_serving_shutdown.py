"""Shutdown with the engine paused: the pipeline's drains do not wait on each other, and the
served impressions a deadline cuts in flight are kept as not written (real servers; the pause
is a fault proxy holding the engine's requests unanswered)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from http_faults import FaultyHttpProxy

from opendisco import Settings, clients
from opendisco.serving import Discovery
from opendisco.signals import SERVED_LISTS


async def test_a_paused_engine_at_shutdown_holds_back_neither_the_log_nor_the_counts(
    market_settings: Settings, market: Any, model: Any
) -> None:
    """The API drains the pipeline under a 5 s deadline. With the engine paused, the served
    impressions' flush hangs until the deadline cuts it: the served-list log (a store write)
    is written all the same, and the cut flush keeps its counts with their mark — counted once
    when the engine answers again, whether or not the held request reached it first."""
    _, users = market
    user = users[42]["_id"]
    with FaultyHttpProxy(market_settings.opensearch_url) as proxy:
        s = market_settings.model_copy(update={"opensearch_url": proxy.url})
        os_client = clients.async_opensearch(s)
        mongo = clients.mongo_async(s)
        try:
            disc = Discovery(s, os_client, mongo[s.mongo_db], model=model)
            assert disc.served_log is not None
            disc.served_log.flush_every_s = 60.0  # no background write: only a drain writes
            recs = await disc.recommend(user, k=6, request_id="req-shutdown-1")
            assert recs.ids and not recs.degraded
            before = await disc.exposure.counts(recs.ids)
            disc.record_served([{"id": r.id, "item": r.item} for r in recs.items])
            shown = disc.served.unwritten_total()
            assert shown == len(recs.ids)  # every item of the sample market is a profile

            proxy.hang_if = lambda method, path: True  # the engine pauses
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(disc.drain(), 2.0)
            assert proxy.hung >= 1  # the served flush was held, then cut by the deadline
            doc = await disc.db[SERVED_LISTS].find_one({"_id": "req-shutdown-1"})
            assert doc is not None, "the served list waited on the engine's write"
            assert [doc["ids"][r] for r in doc["shown"]] == recs.ids
            assert disc.served.unwritten_total() == shown  # kept, not lost
            assert disc.served.retry

            proxy.resume()  # the engine answers again (the held request goes through too)
            await disc.drain()
            assert disc.served.unwritten_total() == 0 and not disc.served.retry
            after = await disc.exposure.counts(recs.ids)
            assert {i: after[i] - before[i] for i in recs.ids} == dict.fromkeys(recs.ids, 1)
        finally:
            await os_client.close()
            await mongo.close()
