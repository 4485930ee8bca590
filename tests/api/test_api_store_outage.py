"""Anonymous pages through a MongoDB outage (the store cut off by a TCP proxy, like kill -9 of
the server; the shared server is never touched): they need nothing from the store but the
candidates' soft features — inbound attention and the owners' tastes, which the process keeps
copies of (``signals.SignalCopies``). A copy goes stale a few seconds after its reads start
failing; the features then read the store, which refuses, and every anonymous page was
answered 503 from then on (the twelve ``similar`` requests of the served-log kill -9 test,
3 runs of 3 on a loaded machine). They now come from the copy as its last read left it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from api_support import h, serve
from tcp_faults import store_proxy

from opendisco import Settings


async def test_anonymous_pages_are_served_past_the_copies_staleness_in_a_store_outage(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    proxy = await store_proxy(api_settings.mongo_url)
    s = api_settings.model_copy(
        update={
            "mongo_url": proxy.mongo_url,
            "api_key_cache_s": 600.0,  # the key was checked before the store went away
            "signal_copies_s": 0.2,  # stale 5 s (the floor) after the last good read
            "api_deadline_ms": 5000,
        }
    )
    item = str(api_catalogue["items"][0]["_id"])
    try:
        async with serve(s) as client:
            copies = client.app.state.runtime.discovery.copies
            end = time.monotonic() + 60
            while not (copies.inbound.fresh() and copies.tastes.fresh()):
                assert time.monotonic() < end, "the copies never read the store"
                await asyncio.sleep(0.1)

            async def similar() -> Any:
                resp = await client.get(f"/v1/items/{item}/similar?k=5", headers=h(keys["read"]))
                assert resp.status_code == 200, resp.text
                return resp.json()

            assert (await similar())["items"]
            await proxy.kill()
            end = time.monotonic() + 60
            while copies.inbound.fresh() or copies.tastes.fresh():
                assert time.monotonic() < end, "the copies stayed fresh without the store"
                await asyncio.sleep(0.2)
            for _ in range(3):
                page = await similar()
                assert page["items"], page
            await proxy.resume()
            assert (await similar())["items"]
    finally:
        await proxy.close()
