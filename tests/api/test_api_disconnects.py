"""Clients that go away before their request is answered, the app served by uvicorn on a
loopback port (a disconnect is seen by the server; the in-process ASGI transport never shows
one).

A retry storm is mostly such requests: a client that times out and posts again leaves the
request it gave up on in the admission queue. Each one admitted used to be worked out in full
(candidates, rerank, its list logged and counted toward exposure) for nobody, while the
retries of live clients waited behind it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_support import h, server_receive, uvicorn_served
from tcp_faults import command_on, store_proxy

from opendisco import Settings, clients
from opendisco.api._admission import Admission
from opendisco.api._edge import Edge
from opendisco.signals import SERVED_LISTS

ORPHANS = 8


def _abandoned_get(port: int, path: str, key: str, rid: str) -> socket.socket:
    """A GET sent in full on a raw socket (closed later by the caller: the client gone)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = f"GET {path} HTTP/1.1\r\nHost: api\r\nX-API-Key: {key}\r\nX-Request-ID: {rid}"
    sock.sendall(f"{head}\r\n\r\n".encode())
    return sock


@contextlib.asynccontextmanager
async def _one_slot(
    settings: Settings, mongo_url: str, deadline_ms: int, read: str
) -> AsyncIterator[tuple[int, httpx.AsyncClient]]:
    """The app served by uvicorn on a loopback port, on this event loop (its store proxy
    too), one request at a time and a queue that waits as long as the slot is held; its port
    and a client of it, once a member's list was served (``read`` cached, the pipeline warm)."""
    update = {
        "mongo_url": mongo_url,
        "api_key_cache_s": 600.0,
        "api_deadline_ms": deadline_ms,
        "api_max_concurrency": 1,
        "api_adaptive_concurrency": False,
        "api_queue_timeout_ms": 20_000,
    }
    async with uvicorn_served(settings.model_copy(update=update), 60) as (server, client):
        r = await client.get("/v1/users/u1/recommendations?k=5", headers=h(read))
        assert r.status_code == 200, r.text
        yield server.config.port, client


async def test_a_request_whose_client_left_while_queued_is_not_worked_out(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    proxy = await store_proxy(api_settings.mongo_url)
    direct = clients.mongo_async(api_settings)
    lists = direct[api_settings.mongo_db][SERVED_LISTS]
    read, write = keys["read"], keys["write"]
    tag = uuid.uuid4().hex[:8]
    orphans = [f"orphan{tag}{i}" for i in range(ORPHANS)]
    try:
        async with _one_slot(api_settings, proxy.mongo_url, 1000, read) as (port, client):
            # the write key cached, the events processor ready
            r = await client.post("/v1/events", json={"events": [_like()]}, headers=h(write))
            assert r.status_code == 200, r.text
            # the one slot held: an event batch whose claim insert the store holds
            proxy.hold_if = command_on("insert", "events")
            holder = asyncio.ensure_future(
                client.post("/v1/events", json={"events": [_like()]}, headers=h(write))
            )
            while proxy.held == 0:
                await asyncio.sleep(0.01)
            socks = [
                _abandoned_get(port, f"/v1/users/u{i + 2}/recommendations?k=5", read, rid)
                for i, rid in enumerate(orphans)
            ]
            await asyncio.sleep(0.3)  # queued behind the batch
            for sock in socks:  # the clients give up
                sock.close()
            await asyncio.sleep(0.2)
            proxy.release()
            assert (await holder).status_code == 200
            live = f"live{tag}"
            r = await client.get(
                "/v1/users/u1/recommendations?k=5", headers={**h(read), "X-Request-ID": live}
            )
            assert r.status_code == 200, r.text
            end = time.monotonic() + 30
            while not await lists.count_documents({"_id": live}):
                assert time.monotonic() < end, "the live request's list was never logged"
                await asyncio.sleep(0.1)
            # the orphans were admitted before it: logged by now, had they been worked out
            logged = await lists.distinct("_id", {"_id": {"$in": orphans}})
            metrics = (await client.get("/metrics")).text
        # nobody read those lists: none was worked out, logged or counted toward exposure
        assert logged == []
        assert f'opendisco_api_rejected_total{{reason="client_gone"}} {ORPHANS}.0' in metrics
    finally:
        await proxy.close()
        await direct.close()


def _like() -> dict[str, str]:
    return {"id": uuid.uuid4().hex, "type": "like", "user_id": "u1", "item_id": "p201"}


async def test_a_read_whose_client_left_mid_work_frees_its_slot_at_once(
    api_settings: Settings,
    api_catalogue: dict[str, Any],
    keys: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await store_proxy(api_settings.mongo_url)
    read = keys["read"]
    item = str(api_catalogue["items"][0]["_id"])
    try:
        async with _one_slot(api_settings, proxy.mongo_url, 4000, read) as (port, client):
            warm = await client.get(f"/v1/items/{item}/similar?k=5", headers=h(read))
            assert warm.status_code == 200, warm.text  # timed below: its route warm too
            # the one slot held by a member's list whose member document the store holds
            # (to the deadline, then its fallback's own read of it)
            proxy.hold_if = command_on("find", "users")
            sock = _abandoned_get(port, "/v1/users/u3/recommendations?k=5", read, "gone1")
            while proxy.held == 0:
                await asyncio.sleep(0.01)
            sock.close()  # the client gives up
            await asyncio.sleep(0.1)
            started = time.monotonic()
            r = await client.get(f"/v1/items/{item}/similar?k=5", headers=h(read))
            took = time.monotonic() - started
            assert r.status_code == 200, r.text
            metrics = (await client.get("/metrics")).text
            proxy.release()
        # answered at once, not after the abandoned read's 4 s deadline and fallback (4.4 s)
        assert took < 3.0, took
        gone = 'route="/v1/users/{user_id}/recommendations",status="499"'
        assert any(gone in line and "_count" in line for line in metrics.splitlines())
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        await proxy.close()


async def _edge_read(app_tail_s: float, gone_after_s: float | None) -> tuple[list[Any], bool]:
    """One GET through the :class:`Edge` on a server that reports a disconnect once the
    response is complete (as uvicorn does), or ``gone_after_s`` into the request (the client
    leaving); the app answers at once, then ``app_tail_s`` of work. The messages sent and
    whether the app got to its end."""
    answered = asyncio.Event()
    done = False
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal done
        if gone_after_s is not None:
            await asyncio.sleep(10 * gone_after_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        answered.set()
        await asyncio.sleep(app_tail_s)
        done = True

    async def send(message: Any) -> None:
        sent.append(message)

    admission = Admission(1)
    edge = Edge(app, admission, get_metrics=lambda: None)
    scope = {"type": "http", "method": "GET", "path": "/v1/x", "headers": []}
    await asyncio.wait_for(edge(scope, server_receive(answered, gone_after_s), send), 5)
    assert admission.in_flight == 0
    return sent, done


async def test_a_read_answered_in_full_is_not_cancelled_by_the_servers_disconnect() -> None:
    sent, done = await _edge_read(app_tail_s=0.05, gone_after_s=None)
    assert sent[0]["status"] == 200 and done  # the work after the answer ran to its end


async def test_a_read_whose_client_leaves_is_cancelled_at_once() -> None:
    sent, done = await _edge_read(app_tail_s=0.0, gone_after_s=0.05)
    assert sent == [] and not done


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_cancel_other_than_the_servers_stop_goes_through_the_edge(method: str) -> None:
    """Only uvicorn's cancel at the end of its stop grace is answered (503) by the edge; any
    other cancel of the request's task goes on. Before, every cancel before an answer began
    was swallowed and answered 503: an in-process caller's timeout read that 503 as an answer
    (its ``wait_for`` returned it), and event batches it retried piled up under a 429 storm."""
    started = asyncio.Event()
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await asyncio.sleep(30)

    async def send(message: Any) -> None:
        sent.append(message)

    admission = Admission(1)
    edge = Edge(app, admission, get_metrics=lambda: None)
    scope = {"type": "http", "method": method, "path": "/v1/x", "headers": []}
    for msg, answered in (
        (None, False),
        ("Task cancelled, timeout graceful shutdown exceeded", True),
    ):
        started.clear()
        sent.clear()
        receive = server_receive(asyncio.Event())  # the request, then nothing: still there
        task = asyncio.ensure_future(edge(scope, receive, send))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel(msg)
        if answered:  # the stop's: answered, the task ends
            await asyncio.wait_for(task, 5)
            assert sent[0]["status"] == 503, sent
        else:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            assert sent == [], sent
        assert admission.in_flight == 0
