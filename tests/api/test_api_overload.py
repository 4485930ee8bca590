"""Overload on the real servers: excess requests are shed (503 + Retry-After) before any
work, admitted ones get fresh answers; a process too busy to meet its deadlines degrades
those answers without opening the breaker, and answers fresh again as soon as it is not."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from api_support import h, serve

from opendisco import Settings


def _kind(resp: Any) -> str:
    if resp.status_code == 503:
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"]["type"] == "Overloaded"
        return "shed"
    assert resp.status_code == 200, resp.text
    return "degraded" if resp.json()["degraded"] else "fresh"


async def _until_fresh(client: Any, url: str, key: str, tries: int = 10) -> None:
    for _ in range(tries):
        if _kind(await client.get(url, headers=h(key))) == "fresh":
            return
    raise AssertionError(f"no fresh answer in {tries} tries")


async def test_overload_is_shed_not_degraded(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    settings = api_settings.model_copy(
        update={"api_max_concurrency": 2, "api_queue_timeout_ms": 50, "api_max_queue": 4}
    )
    async with serve(settings) as client:
        rt = client.app.state.runtime
        users = [u["_id"] for u in api_catalogue["users"]][:60]
        resps = await asyncio.gather(
            *(
                client.get(f"/v1/users/{u}/recommendations?k=10", headers=h(keys["read"]))
                for u in users
            )
        )
        kinds = Counter(_kind(r) for r in resps)
        assert kinds["shed"] > 0 and kinds["fresh"] >= 2, kinds
        assert kinds["degraded"] == 0, kinds  # nothing admitted was starved into the fallback
        assert rt.breaker.state.value == "closed"
        metrics = (await client.get("/metrics")).text
        assert 'opendisco_api_rejected_total{reason="saturated"}' in metrics
        # the load is gone: every request is admitted and fresh again
        again = [
            _kind(await client.get(f"/v1/users/{u}/recommendations?k=10", headers=h(keys["read"])))
            for u in users[:5]
        ]
        assert again == ["fresh"] * 5


async def test_a_busy_process_misses_deadlines_without_opening_the_breaker(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    """The event loop stalls 400 ms while requests are in flight, past their engine calls
    (CPU starvation inside the process): they miss their 300 ms deadline while the engine is
    healthy. They degrade (safely) but are not engine failures, so the breaker (2 failures
    would open it for 30 s) stays closed and the first request after the stalls is fresh."""
    settings = api_settings.model_copy(
        update={
            "api_deadline_ms": 300,
            "api_breaker_failures": 2,
            "api_breaker_reset_s": 30.0,
            "api_max_concurrency": 16,
        }
    )
    async with serve(settings) as client:
        rt = client.app.state.runtime
        url = "/v1/users/u3/recommendations?k=10"
        await _until_fresh(client, url, keys["read"])  # warm (a cold first call can be slow)
        transport = rt.os_client.transport
        answer = transport.perform_request
        stall = asyncio.Event()

        async def answer_then_stall(*args: Any, **kwargs: Any) -> Any:
            result = await answer(*args, **kwargs)
            if stall.is_set():  # a request is past its engine call, the others in flight
                stall.clear()
                time.sleep(0.4)
            return result

        transport.perform_request = answer_then_stall
        kinds: Counter[str] = Counter()
        try:
            for _ in range(4):
                stall.set()
                batch = await asyncio.gather(
                    *(client.get(url, headers=h(keys["read"])) for _ in range(4))
                )
                kinds.update(_kind(r) for r in batch)
        finally:
            del transport.perform_request
        assert kinds["degraded"] > 0, kinds  # deadlines were missed ...
        assert rt.breaker.state.value == "closed" and rt.breaker.failures == 0  # ... not counted
        metrics = (await client.get("/metrics")).text
        assert 'reason="timeout_local"' in metrics
        # no breaker to wait out: fresh again as soon as the process keeps up
        await _until_fresh(client, url, keys["read"], tries=3)
