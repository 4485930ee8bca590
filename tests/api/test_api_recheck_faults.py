"""The served page's re-check (``serving._page``) when MongoDB stops answering exactly while
it runs: an anonymous ``similar``/``search`` page is still served on the engine's copy
(within its own bound, not the request deadline); a member's page is never served unchecked
(degraded or 503, never a 5xx)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from api_support import TcpProxy, h, proxied, serve

from opendisco import Settings, clients
from opendisco.serving._page import StoreRecheck

ANONYMOUS = ("/v1/items/p7/similar?k=10", "/v1/search?q=hiking&k=10")
MEMBER = "/v1/users/u5/recommendations?k=10"


def _cut_during_recheck(rt: Any, cut: Callable[[], Awaitable[None]]) -> list[float]:
    """The pipeline's re-check, with the store cut just before it reads (the candidates,
    features and rerank stages ran on a store that answered); returns the list of how long
    each re-check on the cut store took."""
    real = rt.discovery.recheck
    took: list[float] = []

    async def recheck(rules: Any, ids: list[str]) -> Any:
        await cut()
        t0 = time.perf_counter()
        try:
            return await real(rules, ids)
        finally:
            took.append(time.perf_counter() - t0)

    rt.discovery.recheck = recheck
    return took


async def _pause(proxy: TcpProxy) -> None:
    proxy.pause()


async def test_a_store_that_stops_answering_during_the_recheck(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    os_proxy, mongo_proxy, settings = await proxied(
        api_settings,
        mongo=True,
        # a deadline far past the re-check's own 150 ms bound: a loaded machine's pipeline
        # (0.5 s once) must not reach it before the re-check starts
        api_deadline_ms=2000,
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
                took = _cut_during_recheck(rt, cut)
                for url in ANONYMOUS:
                    took.clear()
                    resp = await client.get(url, headers=h(key))
                    assert resp.status_code == 200, resp.text
                    body = resp.json()
                    # answered within the deadline (not degraded) ...
                    assert body["degraded"] is False and len(body["items"]) == 10
                    # ... the re-check within its own 150 ms bound, not waiting for the
                    # deadline (timed alone: the whole request, 0.66 s once on a loaded
                    # machine, failed a bound of 0.6 s meant for the re-check)
                    assert took and max(took) < 0.6, took
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


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_store_errors_do_not_open_the_engine_breaker(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    """The re-check's MongoDB refuses connections (a store error within the deadline: server
    selection gives up after 100 ms). Members' answers degrade; the breaker (2 failures open
    it for 30 s) guards the engine, which is healthy, so it stays closed and an anonymous
    ``similar`` keeps being served by the pipeline on the engine's copy. It used to count the
    store errors: open after two, and every answer, anonymous ones too, went to the fallback."""
    settings = api_settings.model_copy(
        update={"api_breaker_failures": 2, "api_breaker_reset_s": 30.0, "explore_rate": 0.0}
    )
    dead = settings.model_copy(update={"mongo_url": f"mongodb://127.0.0.1:{_dead_port()}/"})
    gone = clients.mongo_async(dead, serverSelectionTimeoutMS=100)
    key = keys["read"]
    try:
        async with serve(settings) as client:
            rt = client.app.state.runtime
            assert (await client.get(MEMBER, headers=h(key))).status_code == 200
            rt.discovery.recheck = StoreRecheck(gone[settings.mongo_db], settings.items_collection)
            for _ in range(3):
                resp = await client.get(MEMBER, headers=h(key))
                assert resp.status_code == 200 and resp.json()["degraded"] is True, resp.text
            assert rt.breaker.state.value == "closed"
            resp = await client.get(ANONYMOUS[0], headers=h(key))
            assert resp.status_code == 200 and resp.json()["degraded"] is False, resp.text
    finally:
        await gone.close()


async def test_what_the_recheck_drops_is_counted_by_rule(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str], mongo_db: Any
) -> None:
    """A member paused in MongoDB only (no sync since): the answer leaves them out and
    ``opendisco_api_recheck_dropped_total{rule="available"}`` counts it — what tells an operator
    that answers are being corrected for a sync that lags or stopped."""
    key = keys["read"]
    items = mongo_db[api_settings.items_collection]
    async with serve(api_settings.model_copy(update={"explore_rate": 0.0})) as client:
        first = (await client.get(MEMBER, headers=h(key))).json()["items"][0]["id"]
        stored = items.find_one({"_id": first})
        items.update_one({"_id": first}, {"$set": {"available": False}})
        try:
            again = (await client.get(MEMBER, headers=h(key))).json()
            assert again["degraded"] is False and first not in {i["id"] for i in again["items"]}
            metrics = (await client.get("/metrics")).text
        finally:
            items.replace_one({"_id": first}, stored)
    assert 'opendisco_api_recheck_dropped_total{rule="available"} 1.0' in metrics, metrics
