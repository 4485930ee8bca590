"""The HTTP edge with a real server (uvicorn on a loopback port, on this event loop): what a
client or a load balancer sees at the protocol's edges — a stop whose grace ends under a
request, HEAD on the reads, request heads and bodies outside what the API reads."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
import re
import time
from typing import Any

import httpx
import pytest
from api_support import h, proxied, uvicorn_served

from opendisco import Settings
from opendisco._domain import ID_MAX_LENGTH
from opendisco.api import BoundedHttpTools
from opendisco.api._cursor import MAX_CURSOR_CHARS, CursorCodec


async def test_a_request_still_running_when_the_stop_grace_ends_is_answered_503(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # the engine paused under a read whose deadline is far: it is still running when the
    # stop's grace ends (uvicorn cancels it; before, uvicorn answered it 500)
    engine, _, settings = await proxied(api_settings, api_deadline_ms=60_000)
    path = "/v1/users/u1/recommendations?k=5"
    try:
        async with uvicorn_served(settings, timeout_graceful_shutdown=0.5) as (server, client):
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


def _answer(raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, JSON body and header fields (lower-cased names) of a raw answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), json.loads(body), headers


async def test_a_request_head_over_its_bounds_is_refused_431(api_settings: Settings) -> None:
    # before: uvicorn's httptools protocol read any head (a 50 MB field: 200, the process
    # 50 MB larger while it did; 200,000 fields: 200)
    async with uvicorn_served(api_settings) as (server, client):
        port = server.config.port
        big = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        status, body, headers = _answer(await _exchange(port, big))
        assert status == 431, body
        # the shape of every error body (``detail`` too), its id in the header
        assert body == {
            "request_id": headers["x-request-id"],
            "error": {
                "type": "HeadTooLarge",
                "message": f"request head larger than {BoundedHttpTools.max_head_bytes} bytes",
                "detail": None,
            },
        }
        assert headers["connection"] == "close"
        many = b"".join(b"X-%d: a\r\n" % i for i in range(BoundedHttpTools.max_headers + 1))
        status, body, _ = _answer(
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


async def test_the_longest_cursor_issued_pages_through_the_real_server(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: a cursor could have 65,536 characters, the whole head's bound — the API
    # issued a 65,301-character one (827 served ids of 100) whose next page httpx got 431
    # for, and a longer one did not fit httpx's 65,536-character query at all
    secret = api_settings.api_cursor_secret
    assert secret
    user = "u" + "x" * (ID_MAX_LENGTH - 1)  # the longest path a member's page has
    codec = CursorCodec(secret.encode(), max_ids=10_000)
    rng = random.Random(5)
    pool = ["".join(rng.choices("0123456789abcdef", k=100)) for _ in range(2000)]
    lo, hi = 1, len(pool)  # the most served ids whose cursor is still issued
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if codec.encode(user, "for_you", pool[:mid]) else (lo, mid - 1)
    longest = codec.encode(user, "for_you", pool[:lo])
    assert longest is not None and codec.encode(user, "for_you", pool[: lo + 1]) is None
    assert len(longest) > MAX_CURSOR_CHARS - 1000
    # a load balancer's and a tracer's fields besides the key
    fields = {
        "Authorization": f"Bearer {keys['read']}",
        "X-Forwarded-For": ", ".join(["203.0.113.7"] * 50),
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "Cookie": "session=" + "c" * 4000,
    }
    params = {"surface": "for_you", "k": 100, "explain": "false", "cursor": longest}
    async with uvicorn_served(api_settings) as (_, client):
        r = await client.get(f"/v1/users/{user}/recommendations", params=params, headers=fields)
    assert r.status_code == 200, r.text[:300]
    assert not {i["id"] for i in r.json()["items"]} & set(pool[:lo])


async def test_a_head_that_does_not_arrive_in_time_has_its_connection_closed(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: a head sent a field a second, or never finished, held its connection for as
    # long as its client liked (60 s measured), and so did a connection that sent nothing
    monkeypatch.setattr(BoundedHttpTools, "head_timeout_s", 0.5)
    async with uvicorn_served(api_settings) as (server, _):
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


async def test_a_body_not_sent_as_json_is_refused_415_and_an_unreadable_one_400_saying_why(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: no Content-Type or another one was a 422 "Input should be a valid dictionary"
    # (FastAPI handed the bytes on), a gzip body or one nested too deep a 400 "There was an
    # error parsing the body"
    raw = json.dumps({"events": [{"id": "x"}]}).encode()
    json_type = {"Content-Type": "application/json"}
    async with uvicorn_served(api_settings) as (_, client):

        async def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
            return await client.post("/v1/events", content=body, headers=h(keys["write"]) | headers)

        for headers, says in [
            ({}, "got none"),
            ({"Content-Type": "text/plain"}, "got 'text/plain'"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, "got 'application/x-www"),
            (json_type | {"Content-Encoding": "gzip"}, "content coding 'gzip' is not accepted"),
        ]:
            body = gzip.compress(raw) if "Content-Encoding" in headers else raw
            resp = await post(body, headers)
            assert resp.status_code == 415, (headers, resp.text)
            assert resp.json()["error"]["type"] == "UnsupportedMedia"
            assert says in resp.json()["error"]["message"], resp.text
        resp = await post(b"[" * 100_000, json_type)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"] == "request body not read: JSON nested too deep"
        resp = await post(b'{"events": [' + b"9" * 5000 + b"]}", json_type)
        assert resp.status_code == 400, resp.text
        assert "4300 digits" in resp.json()["error"]["message"], resp.text
        # JSON as JSON is read (its event invalid: 422), with or without a charset, as +json
        for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
            assert (await post(raw, {"Content-Type": ctype})).status_code == 422


async def test_a_query_parameter_given_twice_is_422_naming_it(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: the last one was read (``?k=1&k=100``: 100 items; ``q=a&q=b``: a search for b),
    # where a proxy, a cache key or a log may read the first
    read = h(keys["read"])
    async with uvicorn_served(api_settings) as (_, client):
        for path, name in [
            ("/v1/users/u1/recommendations?k=2&k=3", "k"),
            ("/v1/search?q=a&q=b", "q"),
            ("/v1/items/p1/similar?user_id=u1&k=2&user_id=u2", "user_id"),
        ]:
            resp = await client.get(path, headers=read)
            assert resp.status_code == 422, resp.text
            (err,) = resp.json()["error"]["detail"]
            assert err["loc"] == ["query", name], err
            assert err["msg"] == "given 2 times: each parameter is given once", err
        assert (await client.get("/v1/search?q=a&k=2", headers=read)).status_code == 200
        # the key comes first (401), as for every invalid parameter
        assert (await client.get("/v1/search?q=a&q=b")).status_code == 401
        resp = await client.get("/v1/users/u%2F1/recommendations", headers=read)
        assert resp.status_code == 404, resp.text  # before: only "Not Found"
        assert resp.json()["error"]["message"] == "no route for GET /v1/users/u/1/recommendations"
        # ids and numbers outside what the API reads: 4xx, never 5xx
        for path in [
            "/v1/users/u%2F1/recommendations",  # a slash: another path, no route
            "/v1/users/u%001/recommendations",
            "/v1/users/u\u04301/recommendations",  # a Cyrillic a
            "/v1/users/" + "u" * 5000 + "/recommendations",
            "/v1/users/u1/recommendations?k=-1",
            "/v1/users/u1/recommendations?k=1.5",
            "/v1/users/u1/recommendations?k=1e2",
            "/v1/users/u1/recommendations?k=" + "9" * 30,
        ]:
            resp = await client.get(path, headers=read)
            assert resp.status_code in (404, 422), (path, resp.text)


async def test_an_empty_page_explains_itself_as_the_pages_before_it(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: the explain block of a page with no candidate left had only surface,
    # candidates and filtered: its template_version (and every other key) read null
    admin = h(keys["admin"])
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    async with uvicorn_served(api_settings) as (_, client):
        while not pages or pages[-1]["items"]:
            assert len(pages) < 6, [len(p["items"]) for p in pages]
            params = {"k": 100, "explain": "true"} | ({"cursor": cursor} if cursor else {})
            resp = await client.get("/v1/users/u4/recommendations", params=params, headers=admin)
            assert resp.status_code == 200, resp.text
            pages.append(resp.json())
            cursor = pages[-1]["next_cursor"]
    first, empty = pages[0], pages[-1]
    assert first["items"] and not empty["degraded"]
    assert empty["template_version"] == first["template_version"]
    assert sorted(empty["explain"]) == sorted(first["explain"])
    assert empty["explain"]["template_version"] == first["explain"]["template_version"]
    assert empty["explain"]["candidates"] == 0
    assert empty["explain"]["rerank"] == {"steps": []}


async def test_head_is_answered_on_the_ops_endpoints_and_refused_on_the_reads_saying_why(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: HEAD /metrics was a 405 (a monitor's probe read as down), and a read's 405 said
    # only "Method Not Allowed"
    async with uvicorn_served(api_settings) as (_, client):
        for probe in ("/healthz", "/readyz", "/metrics"):
            head = await client.head(probe)
            assert head.status_code == 200 and not head.content, (probe, head.status_code)
        # a read serves a member's list, logged and counted: a HEAD is not worked out as a GET
        resp = await client.head("/v1/users/u1/recommendations", headers=h(keys["read"]))
        assert resp.status_code == 405
        assert resp.headers["Allow"] == "GET"
        resp = await client.request("PATCH", "/v1/search?q=a", headers=h(keys["read"]))
        assert resp.status_code == 405
        assert resp.json()["error"]["message"] == "method PATCH not allowed here (allowed: GET)"
        resp = await client.post("/v1/users/u1/recommendations", headers=h(keys["read"]))
        assert resp.json()["error"]["message"] == "method POST not allowed here (allowed: GET)"


async def test_a_read_that_sends_a_body_is_refused_before_it_is_read(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: a GET's body was read in full (up to api_max_body_bytes, 8 MB, held in memory
    # per request before admission), then ignored: 200
    async with uvicorn_served(api_settings) as (_, client):
        resp = await client.request(
            "GET",
            "/v1/users/u1/recommendations?k=2",
            content=b"x" * 1_000_000,
            headers=h(keys["read"]),
        )
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"]["message"] == "a GET request takes no body"
        assert resp.headers["Connection"] == "close"
        resp = await client.get("/v1/users/u1/recommendations?k=2", headers=h(keys["read"]))
        assert resp.status_code == 200, resp.text
        # a length that says none is no body, however written
        zero = {**h(keys["read"]), "Content-Length": "00"}
        resp = await client.get("/v1/users/u1/recommendations?k=2", headers=zero)
        assert resp.status_code == 200, resp.text


# every method uvicorn's parser (llhttp) takes as a request's: the API serves three of them
_PARSED_METHODS = [
    "DELETE",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PATCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
    "QUERY",
]


async def test_a_client_choosing_methods_does_not_multiply_the_latency_series(
    api_settings: Settings, api_catalogue: dict[str, Any]
) -> None:
    """The latency histogram's ``method`` label is the request's: any of the 35 methods the
    server parses, on any route, was a series of its own (18 samples each). One client's
    ~500 requests grew /metrics from 3 kB to 525 kB, a scrape's merge to 0.6 s of the
    event loop (6 s with the files of dead workers). Methods the API does not serve are
    counted as ``other``."""
    async with uvicorn_served(api_settings) as (_, client):
        for path in ("/healthz", "/v1/search", "/nope"):
            for method in _PARSED_METHODS:
                await client.request(method, path)
        text = (await client.get("/metrics")).text
    methods = set(re.findall(r'opendisco_api_request_seconds_count\{method="([^"]*)"', text))
    assert methods == {"GET", "HEAD", "POST", "other"}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_a_client_cannot_write_the_log_a_line_a_request(api_settings: Settings) -> None:
    """uvicorn logs a warning for each malformed request (one line) and each request asking
    for an Upgrade (two): 200 bytes of log a request, at the client's rate (1,000 requests a
    second: 17 GB a day). Each is logged once a minute, with how many were left out."""
    lines = _Lines()
    uvicorn_log = logging.getLogger("uvicorn.error")
    async with uvicorn_served(api_settings) as (server, _):
        uvicorn_log.addHandler(lines)  # after uvicorn configured its logging
        port = server.config.port
        heads = [b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n"] * 30
        heads += [b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"]
        heads[-1] += b"Connection: Upgrade\r\n\r\n"
        heads += heads[-1:] * 29
        try:
            for head in heads:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                assert (await reader.readline()).split()[1] in (b"200", b"400")
                writer.close()
        finally:
            uvicorn_log.removeHandler(lines)
    # one of each kind at most (none if an earlier test here logged them within the minute)
    assert len(lines.lines) <= 3, lines.lines
