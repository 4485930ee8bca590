"""The HTTP edge with a real server (uvicorn on a loopback port, on this event loop): what a
client or a load balancer sees at the protocol's edges — a stop whose grace ends under a
request, HEAD on the reads, request heads and bodies outside what the API reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from api_support import free_port, h, proxied

from opendisco import Settings
from opendisco.api import BoundedHttpTools, create_app, uvicorn_options


@contextlib.asynccontextmanager
async def _served(
    settings: Settings, **config: Any
) -> AsyncIterator[tuple[uvicorn.Server, httpx.AsyncClient]]:
    """``settings``' app served by uvicorn as ``opendisco serve`` runs it (``config``: options
    on top) and a client of it."""
    port = free_port()
    app = create_app(settings.model_copy(update={"api_gc_freeze": False}))
    opts = {"host": "127.0.0.1", "port": port, "log_level": "warning", "lifespan": "on"}
    server = uvicorn.Server(uvicorn.Config(app, **(opts | uvicorn_options() | config)))
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


async def _exchange(port: int, head: bytes, wait_s: float = 5.0) -> bytes:
    """What the server answers to ``head`` sent on a new connection, until it closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()


def _status_and_body(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_a_request_head_over_its_bounds_is_refused_431(api_settings: Settings) -> None:
    # before: uvicorn's httptools protocol read any head (a 50 MB field: 200, the process
    # 50 MB larger while it did; 200,000 fields: 200)
    async with _served(api_settings) as (server, client):
        port = server.config.port
        big = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        status, body = _status_and_body(await _exchange(port, big))
        assert status == 431, body
        assert body["error"] == {
            "type": "HeadTooLarge",
            "message": f"request head larger than {BoundedHttpTools.max_head_bytes} bytes",
        }
        many = b"".join(b"X-%d: a\r\n" % i for i in range(BoundedHttpTools.max_headers + 1))
        status, body = _status_and_body(
            await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
        )
        assert status == 431, body
        assert "header fields" in body["error"]["message"], body
        # within both bounds: answered, and the connection kept for the next request
        fields = {f"x-f{i}": "v" * 500 for i in range(90)}
        for _ in range(2):
            assert (await client.get("/healthz", headers=fields)).status_code == 200
        events = {"events": [{"pad": "x" * 200_000}]}  # a body is not the head
        assert (await client.post("/v1/events", json=events)).status_code in (401, 422)


async def test_a_head_that_does_not_arrive_in_time_has_its_connection_closed(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: a head sent a field a second, or never finished, held its connection for as
    # long as its client liked (60 s measured), and so did a connection that sent nothing
    monkeypatch.setattr(BoundedHttpTools, "head_timeout_s", 0.5)
    async with _served(api_settings) as (server, _):
        port = server.config.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        with contextlib.suppress(ConnectionError):
            while not reader.at_eof() and time.monotonic() - t0 < 5:
                writer.write(b"X-a: b\r\n")  # a field every 0.1 s: never complete
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(), 0.1)
        took = time.monotonic() - t0
        writer.close()
        assert took < 2.0, took
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # nothing sent: closed too
        assert time.monotonic() - t0 < 2.0
        writer.close()
