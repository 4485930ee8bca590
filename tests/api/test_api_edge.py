"""The HTTP edge with a real server (uvicorn on a loopback port, on this event loop): what a
client or a load balancer sees at the protocol's edges — a stop whose grace ends under a
request, HEAD on the reads, request heads and bodies outside what the API reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from api_support import free_port, h, proxied

from opendisco import Settings
from opendisco.api import create_app


@contextlib.asynccontextmanager
async def _served(
    settings: Settings, **config: Any
) -> AsyncIterator[tuple[uvicorn.Server, httpx.AsyncClient]]:
    """``settings``' app served by uvicorn (``config``: its options on top) and a client of it."""
    port = free_port()
    app = create_app(settings.model_copy(update={"api_gc_freeze": False}))
    opts = {"host": "127.0.0.1", "port": port, "log_level": "warning", "lifespan": "on"}
    server = uvicorn.Server(uvicorn.Config(app, **(opts | config)))
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the API did not start"
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield server, client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_a_request_still_running_when_the_stop_grace_ends_is_answered_503(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # the engine paused under a read whose deadline is far: it is still running when the
    # stop's grace ends (uvicorn cancels it; before, uvicorn answered it 500)
    engine, _, settings = await proxied(api_settings, api_deadline_ms=60_000)
    path = "/v1/users/u1/recommendations?k=5"
    try:
        async with _served(settings, timeout_graceful_shutdown=0.5) as (server, client):
            assert (await client.get(path, headers=h(keys["read"]))).status_code == 200
            engine.pause()
            pending = asyncio.ensure_future(client.get(path, headers=h(keys["read"])))
            await asyncio.sleep(0.5)
            assert not pending.done()
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            resp = await asyncio.wait_for(pending, 10)
            await engine.resume()  # the teardown's drain not held
        assert resp.status_code == 503, resp.text
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["Connection"] == "close"
        body = resp.json()
        assert body["error"]["type"] == "Overloaded", body
        assert "stopping" in body["error"]["message"], body
        assert body["request_id"] == resp.headers["X-Request-ID"]
    finally:
        await engine.close()
