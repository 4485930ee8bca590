"""OpenSearch made unavailable mid-test (through a proxy: paused like SIGSTOP, closed like
kill -9) -> degraded 200s from the fallback, breaker opens and half-opens, then recovery;
bounded concurrency answers 503 + Retry-After when saturated; a 429 storm is not multiplied
toward the engine (no retried refusal, the breaker stops the rest). (That degraded answers
obey the hard rules is test_api_safety's subject.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from api_support import TcpProxy, h, proxied, serve, wait_fallback

from opendisco import Settings

URL = "/v1/users/u5/recommendations?k=10"


async def _proxied(settings: Settings, **overrides: Any) -> tuple[TcpProxy, Settings]:
    """A pausable/killable proxy in front of OpenSearch, and settings that go through it."""
    proxy, _, proxied_settings = await proxied(settings, **overrides)
    return proxy, proxied_settings


async def _until(client: Any, key: str, degraded: bool, timeout: float = 15.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        resp = await client.get(URL, headers=h(key))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if body["degraded"] is degraded:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"never saw degraded={degraded}")


async def test_outage_degrades_then_recovers(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    proxy, settings = await _proxied(
        api_settings,
        api_deadline_ms=400,
        api_breaker_failures=3,
        api_breaker_reset_s=1.0,
        api_fallback_refresh_s=1.0,
    )
    key = keys["read"]
    try:
        async with serve(settings) as client:
            await wait_fallback(client)
            rt = client.app.state.runtime
            healthy = await _until(client, key, degraded=False)
            assert len(healthy["items"]) == 10

            # --- paused (SIGSTOP-like): deadline hits, then the breaker opens -----------
            proxy.pause()
            latencies = []
            for _ in range(6):
                t0 = time.perf_counter()
                resp = await client.get(URL, headers=h(key))
                latencies.append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert body["degraded"] is True and len(body["items"]) == 10
            assert max(latencies) < 0.4 + 0.5, latencies  # never much past the deadline
            assert rt.breaker.state.value == "open"
            # open breaker: the fallback answers without waiting for the 400 ms deadline (it reads
            # the member and the items from MongoDB, so not instantly on a busy machine)
            assert min(latencies[-2:]) < 0.3
            metrics = (await client.get("/metrics")).text
            assert "opendisco_api_breaker_state 2.0" in metrics
            assert 'opendisco_api_degraded_total{reason="timeout",surface="for_you"}' in metrics
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["opensearch"] is False
            assert int(ready.headers["Retry-After"]) >= 1  # like every 503 of the API

            # --- resume: half-open probe succeeds, answers are live again ---------------
            await proxy.resume()
            await _until(client, key, degraded=False)
            assert rt.breaker.state.value == "closed"

            # --- killed (kill -9-like): connections reset, port refuses ----------------
            await proxy.kill()
            for _ in range(5):
                resp = await client.get(URL, headers=h(key))
                assert resp.status_code == 200 and resp.json()["degraded"] is True
                assert resp.json()["items"]
            # other endpoints degrade too (never a 5xx)
            for path in ("/v1/items/p3/similar", "/v1/search?q=jazz"):
                resp = await client.get(path, headers=h(key))
                assert resp.status_code == 200 and resp.json()["degraded"] is True
                assert resp.json()["items"]
            assert "p3" not in [it["id"] for it in resp.json()["items"]] or path != (
                "/v1/items/p3/similar"
            )

            # --- restarted: recovery ----------------------------------------------------
            await proxy.resume()
            body = await _until(client, key, degraded=False)
            assert len(body["items"]) == 10
    finally:
        await proxy.close()


async def test_saturation_is_503_with_retry_after(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    proxy, settings = await _proxied(
        api_settings,
        api_max_concurrency=2,
        api_deadline_ms=800,
        api_breaker_failures=100,
    )
    try:
        async with serve(settings) as client:
            await wait_fallback(client)
            proxy.pause()  # every Discovery call now hangs until the deadline
            resps = await asyncio.gather(
                *(client.get(URL, headers=h(keys["read"])) for _ in range(6))
            )
            codes = sorted(r.status_code for r in resps)
            assert codes == [200, 200, 503, 503, 503, 503], codes
            for r in resps:
                if r.status_code == 503:
                    assert int(r.headers["Retry-After"]) >= 1
                    assert r.json()["error"]["type"] == "Overloaded"
                else:
                    assert r.json()["degraded"] is True
            # ops endpoints are not bounded
            assert (await client.get("/healthz")).status_code == 200
            await proxy.resume()
    finally:
        await proxy.close()


async def test_a_429_storm_is_not_multiplied_toward_the_engine(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    """Every search refused with 429 ``es_rejected_execution_exception`` while clients retry
    at once (no backoff): the API never retries a refused search (at most one candidate
    ``_msearch`` per request) and the breaker stops sending them, bar one half-open probe per
    ``api_breaker_reset_s``: an engine shedding load is not sent more of it. Every answer is
    a degraded 200 (or 503 + Retry-After), within the deadline."""
    from http_faults import FaultyHttpProxy

    sent: list[str] = []
    conc, asked, failures, reset_s = 8, 60, 3, 1.0
    with FaultyHttpProxy(api_settings.opensearch_url, statuses=(429,)) as proxy:
        settings = api_settings.model_copy(
            update={
                "opensearch_url": proxy.url,
                "api_deadline_ms": 800,
                "api_breaker_failures": failures,
                "api_breaker_reset_s": reset_s,
            }
        )
        async with serve(settings) as client:
            await wait_fallback(client)
            assert (await _until(client, keys["read"], degraded=False))["items"]

            def refuse(method: str, path: str) -> bool:
                if path.endswith("/_msearch"):
                    sent.append(path)
                return True

            proxy.fail_if = refuse
            codes: list[int] = []
            slowest = 0.0
            began = time.monotonic()

            async def reader() -> None:  # until ``asked`` requests (8 s at most)
                nonlocal slowest
                while len(codes) < asked and time.monotonic() < began + 8:
                    t0 = time.perf_counter()
                    resp = await client.get(URL, headers=h(keys["read"]))
                    slowest = max(slowest, time.perf_counter() - t0)
                    codes.append(resp.status_code)
                    if resp.status_code == 200:
                        assert resp.json()["degraded"] is True, resp.text
                    else:
                        assert resp.status_code == 503 and int(resp.headers["Retry-After"]) >= 1

            await asyncio.gather(*(reader() for _ in range(conc)))
            storm_s = time.monotonic() - began
            proxy.fail_if = None
            await _until(client, keys["read"], degraded=False)  # and it recovers
    # the requests in flight when the storm began, then one probe per reset period
    most = conc + failures + int(storm_s / reset_s) + 1
    assert len(codes) > 2 * most, (codes, storm_s)  # many more requests than that
    assert len(sent) <= most, (len(sent), len(codes), storm_s)
    assert codes.count(200) >= len(codes) / 2, codes
    assert slowest < 0.8 + 1.0, slowest  # the deadline, and a fallback's MongoDB reads
