"""The served page's re-check (``serving._page``) when MongoDB stops answering exactly while
it runs: an anonymous ``similar``/``search`` page is still served on the engine's copy
(within its own bound, not the request deadline); a member's page is never served unchecked
(degraded or 503, never a 5xx)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from api_support import TcpProxy, h, proxied, serve

from opendisco import Settings

ANONYMOUS = ("/v1/items/p7/similar?k=10", "/v1/search?q=hiking&k=10")
MEMBER = "/v1/users/u5/recommendations?k=10"


def _cut_during_recheck(rt: Any, cut: Callable[[], Awaitable[None]]) -> None:
    """The pipeline's re-check, with the store cut just before it reads (the candidates,
    features and rerank stages ran on a store that answered)."""
    real = rt.discovery.recheck

    async def recheck(rules: Any, ids: list[str]) -> Any:
        await cut()
        return await real(rules, ids)

    rt.discovery.recheck = recheck


async def _pause(proxy: TcpProxy) -> None:
    proxy.pause()


async def test_a_store_that_stops_answering_during_the_recheck(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    os_proxy, mongo_proxy, settings = await proxied(
        api_settings,
        mongo=True,
        api_deadline_ms=800,
        api_key_cache_s=600.0,  # the key is read once, before the store is cut
        explore_rate=0.0,
    )
    assert mongo_proxy is not None
    key = keys["read"]
    try:
        async with serve(settings) as client:
            rt = client.app.state.runtime
            for url in (*ANONYMOUS, MEMBER):
                assert (await client.get(url, headers=h(key))).status_code == 200
            real = rt.discovery.recheck
            for cut in (lambda: _pause(mongo_proxy), mongo_proxy.kill):
                _cut_during_recheck(rt, cut)
                for url in ANONYMOUS:
                    t0 = time.perf_counter()
                    resp = await client.get(url, headers=h(key))
                    took = time.perf_counter() - t0
                    assert resp.status_code == 200, resp.text
                    body = resp.json()
                    assert body["degraded"] is False and len(body["items"]) == 10
                    assert took < 0.6, took  # its own bound, not the 800 ms deadline
                    await mongo_proxy.resume()
                resp = await client.get(MEMBER, headers=h(key))
                assert resp.status_code in (200, 503), resp.text
                assert resp.status_code == 503 or resp.json()["degraded"] is True
                await mongo_proxy.resume()
                rt.discovery.recheck = real
            assert rt.breaker.state.value == "closed"
            await asyncio.sleep(0)
    finally:
        await os_proxy.close()
        await mongo_proxy.close()
