"""Client factories: the orjson serializer encodes what opensearch-py's stdlib one does; the
async client fails over from dead and hung nodes (FailoverTransport)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import bson
import numpy as np
import pytest
from opensearchpy.exceptions import SerializationError
from opensearchpy.serializer import JSONSerializer

from opendisco import Settings, clients


def test_orjson_serializer_matches_the_stdlib_one() -> None:
    fast, slow = clients._serializer(), JSONSerializer()
    doc: dict[str, Any] = {
        "at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "f32": np.float32(0.5),
        "i64": np.int64(7),
        "vec": np.arange(3, dtype=np.float64),
        "id": uuid.UUID(int=1),
        "text": 'quote " brace } ünï',
        "nested": [{"a": 1.25}, None, True],
    }
    assert json.loads(fast.dumps(doc)) == json.loads(slow.dumps(doc))
    assert fast.dumps("already a string") == "already a string"
    assert fast.dumps(b'{"raw": 1}\n') == b'{"raw": 1}\n'  # pre-serialized bulk bodies
    body = '{"hits": {"hits": [{"_id": "x", "_score": 1.5}]}}'
    assert fast.loads(body) == slow.loads(body)
    with pytest.raises(SerializationError):
        fast.loads("{not json")
    with pytest.raises(SerializationError):
        fast.dumps({"x": object()})


async def test_clients_use_it(settings: Settings) -> None:
    sync = clients.opensearch(settings)
    aio = clients.async_opensearch(settings)
    try:
        for c in (sync, aio):
            assert type(c.transport.serializer).__name__ == "OrjsonSerializer"
        assert (await aio.info())["version"]["number"]
        assert sync.info()["version"]["number"]
    finally:
        sync.close()
        await aio.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed: connection refused


@contextlib.asynccontextmanager
async def _hung_server() -> AsyncIterator[int]:
    """Accepts connections and never answers: a node that hangs (SIGSTOP, partition)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for w in held:
            w.transport.abort()
        server.close()


async def test_a_dead_node_costs_no_request(settings: Settings) -> None:
    """max_retries=0 (the API's choice): requests that meet a refused connection go to the
    live node; the dead one leaves the rotation."""
    hosts = f"http://127.0.0.1:{_closed_port()},{settings.opensearch_hosts[0]}"
    client = clients.async_opensearch(
        settings.model_copy(update={"opensearch_url": hosts}), max_retries=0
    )
    try:
        for _ in range(6):
            assert (await client.info())["version"]["number"]
        pool = client.transport.connection_pool
        assert [c.port for c in pool.dead_count] == [int(hosts.split(",")[0].rsplit(":", 1)[1])]
        assert len(pool.connections) == 1
    finally:
        await client.close()


async def test_a_hung_node_costs_one_timeout_not_one_per_request(settings: Settings) -> None:
    """A node that accepts and never answers is taken out of rotation after its first timeout
    (opensearch-py marks dead only when it retries: with retry_on_timeout=False every request
    routed there waited the full timeout, which the stock transport shows)."""
    from opensearchpy import AsyncTransport
    from opensearchpy.exceptions import ConnectionTimeout

    async with _hung_server() as port:
        hung = settings.model_copy(
            update={"opensearch_url": f"http://127.0.0.1:{port},{settings.opensearch_hosts[0]}"}
        )
        timeouts = {}
        for name, extra in (("failover", {}), ("stock", {"transport_class": AsyncTransport})):
            client = clients.async_opensearch(
                hung, max_retries=0, retry_on_timeout=False, timeout=0.3, **extra
            )
            timeouts[name] = 0
            try:
                for _ in range(6):
                    try:
                        await client.info()
                    except ConnectionTimeout:
                        timeouts[name] += 1
            finally:
                await client.close()
        assert timeouts["failover"] == 1
        assert timeouts["stock"] >= 2  # round-robin keeps sending requests to the hung node


async def _cut_calls(client: Any, n: int, deadline: float) -> int:
    """``n`` calls under a caller's deadline shorter than the client's timeout (the API's
    case: the call is cancelled, no timeout is ever raised); how many the deadline cut."""
    cut = 0
    for _ in range(n):
        try:
            await asyncio.wait_for(client.info(), deadline)
        except TimeoutError:
            cut += 1
    return cut


async def test_a_call_cut_on_a_hung_node_takes_it_out_of_rotation(settings: Settings) -> None:
    """With ``hung_after``, a call the caller's deadline cancelled on a node that answered
    nothing meanwhile, while another node answered, marks that node dead: one cut answer
    (two when the first call goes there, before any node has answered), then every call
    goes to the live node. Without it, every other call is cut (round
    robin keeps the hung node: the API's 0% non-degraded in bench/ha)."""
    async with _hung_server() as port:
        hung = settings.model_copy(
            update={"opensearch_url": f"http://127.0.0.1:{port},{settings.opensearch_hosts[0]}"}
        )
        cuts = {}
        for name, extra in (("hung_after", {"hung_after": 0.1}), ("without", {})):
            client = clients.async_opensearch(hung, max_retries=0, timeout=30, **extra)
            try:
                cuts[name] = await _cut_calls(client, 8, deadline=0.4)
                dead = [c.port for c in client.transport.connection_pool.dead_count]
            finally:
                await client.close()
            if name == "hung_after":
                assert dead == [port]
        assert cuts["hung_after"] <= 2
        assert cuts["without"] >= 4


async def test_a_silent_cluster_keeps_its_nodes(settings: Settings) -> None:
    """Every node silent (a whole-cluster stall, not one hung node): cut calls mark none
    dead, so the rotation is never emptied by the caller's deadline alone."""
    async with _hung_server() as a, _hung_server() as b:
        both = settings.model_copy(
            update={"opensearch_url": f"http://127.0.0.1:{a},http://127.0.0.1:{b}"}
        )
        client = clients.async_opensearch(both, max_retries=0, timeout=30, hung_after=0.1)
        try:
            assert await _cut_calls(client, 4, deadline=0.3) == 4
            assert not client.transport.connection_pool.dead_count
        finally:
            await client.close()


async def test_a_pool_wait_cancelled_twice_gives_its_lock_back() -> None:
    """PyMongo's wait on a pool or topology condition (``_async_cond_wait``), cancelled once
    and again before it took the lock back (a deadline, then a shutdown), while another
    operation held the lock. With Python 3.11's ``asyncio.wait_for`` the lock stayed taken
    by nobody: the client's every later operation and its close() waited forever."""
    import pymongo.asynchronous.pool
    from pymongo._asyncio_lock import Condition, Lock

    lock = Lock()
    cond = Condition(lock)
    other_done = asyncio.Event()

    async def waiting_operation() -> None:
        async with lock:
            await pymongo.asynchronous.pool._async_cond_wait(cond, 10.0)

    async def other_operation() -> None:
        async with lock:
            await other_done.wait()

    waiting = asyncio.create_task(waiting_operation())
    await asyncio.sleep(0.01)  # waiting on the condition (the lock released meanwhile)
    other = asyncio.create_task(other_operation())
    await asyncio.sleep(0.01)  # another operation holds the lock
    waiting.cancel()
    await asyncio.sleep(0.01)  # the wait must take the lock back before it ends
    waiting.cancel()
    other_done.set()  # cancelled again just as the other operation ends
    results = await asyncio.gather(waiting, other, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError) and results[1] is None, results
    assert not lock.locked()  # nobody holds it: free


async def test_a_string_that_is_not_utf8_is_read_with_a_replacement_character(
    settings: Settings,
) -> None:
    """MongoDB keeps a string a driver wrote that is not UTF-8 (FerretDB replaces its bytes at
    insert); PyMongo's strict default raised InvalidBSON on every read of a batch holding it
    — a sync pass failing for ever. The document as the server returns it (raw BSON, the
    bad bytes in a value) read with each client's options."""
    # "é" (2 bytes in UTF-8) overwritten with Latin-1's one byte and a "!"
    raw = bson.encode({"_id": "m1", "bio": "café"}).replace("é".encode(), b"\xe9!")
    sync_client = clients.mongo(settings)
    async_client = clients.mongo_async(settings)
    try:
        for client in (sync_client, async_client):
            doc = bson.decode(raw, codec_options=client.codec_options)
            assert doc == {"_id": "m1", "bio": "caf\ufffd!"}
        with pytest.raises(bson.errors.InvalidBSON):
            bson.decode(raw)  # the strict default
    finally:
        sync_client.close()
        await async_client.close()


async def test_closing_a_client_of_a_paused_store_is_bounded(settings: Settings) -> None:
    """``AsyncMongoClient.close`` first sends ``endSessions`` on a connection to the store:
    paused, it held the close for ~20 s (the connect timeout; up to the socket timeout on a
    pooled connection), and a sync worker stopped then exited 24 s late. Closed with
    :func:`clients.close_mongo`, the sessions get 2 s and the pools and monitors stop."""
    from tcp_faults import store_proxy

    proxy = await store_proxy(settings.mongo_url)
    client = clients.mongo_async(settings.model_copy(update={"mongo_url": proxy.mongo_url}))
    try:
        await client[settings.mongo_db]["close_probe"].find_one({})  # a session to end
        proxy.pause()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await clients.close_mongo(client, end_sessions_s=1.0)
        assert loop.time() - t0 < 3.0
        with pytest.raises(Exception, match="after close"):  # closed for good
            await client[settings.mongo_db]["close_probe"].find_one({})
    finally:
        await proxy.close()
