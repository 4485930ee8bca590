"""Exposure caps in degraded answers while the engine refuses searches (a 429 storm on
``_search``/``_msearch``, through the HTTP fault proxy of ``tests/http_faults.py``; nothing of
OpenSearch or MongoDB is mocked): the cap list (a realtime GET) still reads, the impressions'
counts (a search) do not, the served impressions cannot be written (their caps lookup is a
search) — the fallback must still count what this process served toward each member's cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from api_support import h, serve
from http_faults import FaultyHttpProxy
from test_api_safety import NEAR, _ready, build_safe, namespaced

from opendisco import Settings


@pytest.fixture(scope="module")
def cap_settings(api_settings: Settings) -> Settings:
    return namespaced(api_settings, "capstorm")


@pytest.fixture(scope="module")
async def cap_catalogue(cap_settings: Settings, model: Any) -> dict[str, Any]:
    """test_api_safety's catalogue (x-near: cap 4, the one profile sn may see), own namespace."""
    return await build_safe(cap_settings, model, "capstorm")


async def _refreshes(rt: Any, n: int) -> None:
    """Wait until ``n`` more fallback refreshes have ended (ok or failed)."""
    lists = rt.fallback.lists
    start = lists.refreshed_ok + lists.refresh_failures
    for _ in range(300):
        if lists.refreshed_ok + lists.refresh_failures >= start + n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the fallback did not refresh")


async def test_a_refresh_that_cannot_read_the_counts_still_caps_what_this_process_served(
    cap_settings: Settings, cap_catalogue: dict[str, Any]
) -> None:
    """The storm starts after a refresh read x-near's count; the refreshes during it read the
    cap list but not the counts. sn asks again and again (degraded answers): x-near is shown
    at most its cap, then nothing safe is left (503). (A refresh whose counts read failed
    dropped the counts: the fallback checked the cap list alone, x-near — not capped when
    the list was read — was shown in every answer, ``degraded_rules`` empty: the live probe
    served a profile of cap 200 274 times in a 10 s storm.)"""
    key = cap_catalogue["keys"]["read"]
    with FaultyHttpProxy(cap_settings.opensearch_url, statuses=(429,)) as proxy:
        settings = cap_settings.model_copy(
            update={
                "opensearch_url": proxy.url,
                "api_breaker_failures": 2,
                "api_breaker_reset_s": 30.0,
            }
        )
        async with serve(settings) as client:
            await _ready(client)
            rt = client.app.state.runtime
            await _refreshes(rt, 1)
            snap = rt.fallback.lists.snapshot
            assert snap.counts is not None
            assert NEAR in {r.id for recs in snap.lists.values() for r in recs}
            before = snap.counts.get(NEAR, 0)
            assert before == 0, before  # a fresh namespace: nobody was shown x-near yet
            proxy.fail_if = lambda method, path: path.endswith(("/_search", "/_msearch"))
            await _refreshes(rt, 2)  # at least one whole refresh during the storm
            assert rt.fallback.lists.snapshot is not snap
            shown, codes = 0, []
            for _ in range(8):
                resp = await client.get("/v1/users/sn/recommendations?k=5", headers=h(key))
                codes.append(resp.status_code)
                if resp.status_code == 200:
                    assert resp.json()["degraded"] is True
                    shown += NEAR in [it["id"] for it in resp.json()["items"]]
                else:
                    assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
            assert 1 <= shown <= 4 and codes[-1] == 503, (shown, codes)
