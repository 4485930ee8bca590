"""An HTTP fault proxy in front of the real OpenSearch, shared by the ingest, signals and API
tests (a module with a unique name at the top of ``tests/``: importable from every folder).

Faults an overloaded engine produces, injected on the wire (the shared server is never
touched, nothing of OpenSearch is mocked: every request not faulted reaches it):

* ``failing``: every request answered by the proxy, cycling through ``statuses`` (by default
  503 and 429 alternately: an overloaded or restarting engine);
* ``fail_if(method, path)``: the matching requests answered 429 ``es_rejected_execution_exception``
  (a storm on one kind of call, e.g. the cap-list update);
* ``reject_item(index, id)``: inside ``_bulk`` requests, the matching items are not forwarded
  and answered ``429 es_rejected_execution_exception`` in their place in the bulk answer (an
  engine whose write queue rejects single items of a bulk it otherwise applies); in ``_mget``
  answers the matching documents are replaced by that error (a shard's get queue full);
* ``lose_answer_if(method, path, body)``: the matching requests are forwarded and applied by
  the engine, then the client's connection is cut before the answer (``lost`` counts them);
* ``hang_if(method, path)``: the matching requests wait unanswered (a paused engine) until
  :meth:`FaultyHttpProxy.resume` or the proxy's exit, then go through (``hung`` counts them);
* ``missing_if(method, path)``: the matching requests answered 404 ``index_not_found_exception``
  (a node behind on the cluster state, e.g. resumed after a pause, asked about a new index);
  a matching ``_bulk`` is answered as such a node answers it: 200, every item 404
  ``index_not_found_exception``, nothing applied;
* ``rewrite_if(method, path, answer)``: the engine's 200 JSON answers to the matching requests
  are replaced by what it returns (None: left as they are; ``rewritten`` counts them): the
  engine's partial answers, e.g. a search with ``_shards.failed`` (a shard's search queue
  full: its hits missing from a 200) or an ``_msearch`` with one sub-search an error object.

When the engine behind cannot be reached (a TCP fault proxy between them cut, or the engine
down), the client's connection is dropped without an answer — what it sees with no proxy
between (``unreachable`` counts them) — rather than a 500 and a logged traceback.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["FaultyHttpProxy", "rejected_item"]

_REJECTED = {
    "type": "es_rejected_execution_exception",
    "reason": "rejected execution of coordinating operation [fault proxy]",
}


def rejected_item(action: str, index: str, doc_id: str) -> dict[str, Any]:
    """One ``_bulk`` answer item the engine gives for an item its write queue rejected."""
    return {action: {"_index": index, "_id": doc_id, "status": 429, "error": dict(_REJECTED)}}


def _bulk_lines(body: bytes) -> list[tuple[str, dict[str, Any], bytes | None, bytes]]:
    """``(action, meta, source line or None, action line)`` of each item of a ``_bulk`` body."""
    lines = [ln for ln in body.split(b"\n") if ln.strip()]
    out = []
    i = 0
    while i < len(lines):
        head = lines[i]
        action, meta = next(iter(json.loads(head).items()))
        source = None if action == "delete" else lines[i + 1]
        out.append((action, meta, source, head))
        i += 1 if source is None else 2
    return out


class FaultyHttpProxy:
    """An HTTP reverse proxy to ``target`` on its own thread (see the module docstring)."""

    def __init__(self, target: str, statuses: tuple[int, ...] = (503, 429)) -> None:
        self.target = target.rstrip("/")
        self.statuses = statuses
        self.failing = False
        self.fail_if: Callable[[str, str], bool] | None = None
        self.reject_item: Callable[[str, str], bool] | None = None
        self.lose_answer_if: Callable[[str, str, bytes], bool] | None = None
        self.lost = 0
        self.hang_if: Callable[[str, str], bool] | None = None
        self.hung = 0
        self.missing_if: Callable[[str, str], bool] | None = None
        self.rewrite_if: Callable[[str, str, dict[str, Any]], dict[str, Any] | None] | None = None
        self.rewritten = 0
        self.unreachable = 0
        self._resumed: asyncio.Event | None = None  # the proxy loop's, made in _start
        self.port = 0
        self.answered: dict[int, int] = {}
        self.rejected: Counter[str] = Counter()  # bulk items rejected, by id
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _count(self, status: int) -> None:
        self.answered[status] = self.answered.get(status, 0) + 1

    def _refuse(self, status: int) -> web.Response:
        self._count(status)
        error = _REJECTED if status == 429 else {"type": "unavailable", "reason": "fault proxy"}
        return web.json_response({"error": error, "status": status}, status=status)

    def _missing(self, request: web.Request, body: bytes) -> web.Response:
        """What a node without the index in its cluster state answers (nothing applied)."""
        index = request.path.strip("/").split("/")[0]

        def error(name: str) -> dict[str, Any]:
            return {"type": "index_not_found_exception", "reason": f"no such index [{name}]"}

        if not request.path.endswith("/_bulk"):
            self._count(404)
            return web.json_response({"error": error(index), "status": 404}, status=404)
        self._count(200)
        items = []
        for action, meta, _, _ in _bulk_lines(body):
            name = str(meta.get("_index", index))
            items.append(
                {
                    action: {
                        "_index": name,
                        "_id": meta.get("_id"),
                        "status": 404,
                        "error": error(name),
                    }
                }
            )
        return web.json_response({"took": 0, "errors": True, "items": items})

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        if "content-length" in {k.lower() for k in headers}:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        async with self._session.request(
            request.method, self.target + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            self._count(resp.status)
            return resp.status, data, resp.headers.get("Content-Type", "application/json")

    async def _bulk(self, request: web.Request, body: bytes) -> web.Response:
        """Forward the items not rejected; answer every item in its place."""
        assert self.reject_item is not None
        default_index = request.path.strip("/").split("/")[0] if request.path.count("/") > 1 else ""
        items = _bulk_lines(body)
        keep: list[bytes] = []
        plan: list[dict[str, Any] | None] = []  # None: the engine's answer, in order
        for action, meta, source, head in items:
            index = str(meta.get("_index", default_index))
            doc_id = str(meta.get("_id", ""))
            if self.reject_item(index, doc_id):
                self.rejected[doc_id] += 1
                plan.append(rejected_item(action, index, doc_id))
            else:
                keep += [head] if source is None else [head, source]
                plan.append(None)
        upstream: list[dict[str, Any]] = []
        took = 0
        if keep:
            status, data, ctype = await self._forward(request, b"\n".join(keep) + b"\n")
            if status != 200:
                return web.Response(body=data, status=status, content_type=ctype.split(";")[0])
            answer = json.loads(data)
            upstream, took = list(answer.get("items", [])), int(answer.get("took", 0))
        merged = [p if p is not None else upstream.pop(0) for p in plan]
        errors = any("error" in next(iter(it.values())) for it in merged)
        return web.json_response({"took": took, "errors": errors, "items": merged})

    async def _mget(self, request: web.Request, body: bytes) -> web.Response:
        """Forward; answer the matching documents with the rejection instead of the engine's."""
        assert self.reject_item is not None
        status, data, ctype = await self._forward(request, body)
        if status != 200:
            return web.Response(body=data, status=status, content_type=ctype.split(";")[0])
        answer = json.loads(data)
        docs = []
        for doc in answer.get("docs", []):
            index, doc_id = str(doc.get("_index", "")), str(doc.get("_id", ""))
            if self.reject_item(index, doc_id):
                self.rejected[doc_id] += 1
                doc = {"_index": index, "_id": doc_id, "error": dict(_REJECTED)}
            docs.append(doc)
        return web.json_response({**answer, "docs": docs})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            return await self._answer(request, body)
        except aiohttp.ClientConnectionError:  # the engine behind is unreachable
            self.unreachable += 1
            if request.transport is not None:  # None: the client has gone already
                request.transport.abort()
            return web.Response(status=502)

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if self.failing:
            n = sum(self.answered.values())
            return self._refuse(self.statuses[n % len(self.statuses)])
        if self.fail_if is not None and self.fail_if(request.method, request.path):
            return self._refuse(429)
        if self.missing_if is not None and self.missing_if(request.method, request.path):
            return self._missing(request, body)
        if self.hang_if is not None and self.hang_if(request.method, request.path):
            assert self._resumed is not None
            self.hung += 1
            await self._resumed.wait()
        lose = self.lose_answer_if
        if lose is not None and lose(request.method, request.path, body):
            await self._forward(request, body)  # applied by the engine ...
            self.lost += 1
            assert request.transport is not None
            request.transport.abort()  # ... and the answer lost: the connection cut
            return web.Response(status=204)
        if self.reject_item is not None and request.path.endswith("/_bulk") and body.strip():
            return await self._bulk(request, body)
        if self.reject_item is not None and request.path.endswith("/_mget"):
            return await self._mget(request, body)
        status, data, ctype = await self._forward(request, body)
        if self.rewrite_if is not None and status == 200 and ctype.startswith("application/json"):
            new = self.rewrite_if(request.method, request.path, json.loads(data))
            if new is not None:
                self.rewritten += 1
                return web.json_response(new)
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    def resume(self) -> None:
        """Let the hung requests through (and every later one ``hang_if`` matches)."""
        assert self._resumed is not None
        self._loop.call_soon_threadsafe(self._resumed.set)

    async def _start(self) -> None:
        self._resumed = asyncio.Event()
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def __enter__(self) -> FaultyHttpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.resume()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
