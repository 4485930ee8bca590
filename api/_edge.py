"""The pure-ASGI outer layer of the app: request id, latency histogram, request bodies,
admission control; every ``/v1`` answer ``Cache-Control: no-store`` (a list is one member's,
as the rules stand now: a cache in front of the API that kept one served it after a block).

It runs before routing and before FastAPI builds anything, so shedding a request the
:class:`~opendisco.api._admission.Admission` cannot admit (503 + Retry-After) costs almost
nothing; ops endpoints (``/healthz``, ``/readyz``, ``/metrics``) are never bounded.

A request that declares a body has it received in full here, before admission: at most
``max_body_bytes`` (413 past it, before anything is parsed) within ``body_timeout_s`` (408).
A client that starts a body and stalls therefore holds a connection, never one of the
admitted slots every other /v1 request needs.

A request whose client went away while it waited for admission (a client that timed out and
retries leaves the request it gave up on in the queue: a retry storm is mostly such requests)
is dropped once admitted, before any work: its slot goes to the next in the queue. Worked out,
each one took a slot for a whole answer nobody read, its list logged and counted toward
exposure, while the live requests behind it waited. A read whose client goes away while it is
worked out is cancelled then (:func:`_unless_gone`); an event batch is not (it runs to its end
in its own task, ``serving._writes``: its request keeps the slot, so abandoned batches stay
bounded by admission).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opendisco._exceptions import BodyTimeout, BodyTooLarge, Overloaded
from opendisco.serving import retrieve
from opendisco.signals import REQUEST_ID_PATTERN

from ._admission import Admission
from ._errors import error_response
from ._metrics import Metrics

__all__ = ["Edge"]

_RID = re.compile(REQUEST_ID_PATTERN)
#: the paths whose requests go through admission control
_BOUNDED = "/v1/"
# the methods the API serves, each its own ``method`` label of the latency histogram; the
# others (any of the ~35 the server parses) are ``other``: the client chooses the method
_LABELLED_METHODS = frozenset({"GET", "HEAD", "POST"})
#: what a request still running when the server's stop grace ends is told (503, Retry-After)
STOPPING = "the server is stopping: the request was cut short; retry"
#: the status a read whose client went away is recorded with (nginx's "client closed request")
CLIENT_GONE = 499


def _stop_grace_over(exc: asyncio.CancelledError) -> bool:
    """Whether a cancel is uvicorn's at the end of its stop grace (``Server.shutdown`` cancels
    each request task still running with this message)."""
    return bool(exc.args) and "graceful shutdown exceeded" in str(exc.args[0])


def _declares_body(scope: Scope) -> bool:
    """Whether the request says a body follows: chunked, or a length that is not zero (``0``,
    ``00`` and an empty value say none)."""
    headers = scope["headers"]
    if any(k == b"transfer-encoding" for k, _ in headers):
        return True
    raw = next((v.strip() for k, v in headers if k == b"content-length"), None)
    return raw is not None and raw != b"" and _declared_length(scope) != 0


def _declared_length(scope: Scope) -> int | None:
    raw = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


async def _read_body(receive: Receive, limit: int, timeout_s: float) -> bytes | None:
    """The whole request body, or None when the client disconnected first;
    :class:`BodyTooLarge` past ``limit`` bytes, :class:`BodyTimeout` after ``timeout_s``."""
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body larger than {limit} bytes")
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {timeout_s:g} s") from None


def _replay(ready: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands the app the messages read already (the body), then the
    client's."""
    pending = list(ready)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _ready_message(receive: Receive) -> Message | None:
    """The client's next message if the server holds it now (a disconnect once the client
    went away; a bodiless request's own), else None: never waited for."""
    task = asyncio.ensure_future(receive())
    try:
        await asyncio.sleep(0)  # one step: a message the server holds is returned in it
    finally:
        waiting = not task.done()
        if waiting:  # nothing received: the wait is cancelled (also when this caller is)
            task.cancel()
    return None if waiting else task.result()


async def _unless_gone(
    run: Callable[[Receive], Awaitable[None]],
    ready: list[Message],
    receive: Receive,
    answered: Callable[[], bool],
) -> bool:
    """Run a read (``run``: the app, given its ``receive``), cancelled as soon as its client
    goes away: whether it was. The client's messages are read here (a disconnect is all that
    can come once the request is read); the app is handed ``ready``, then a disconnect when
    there is one (the server's disconnect once the answer is sent, ``answered``, cancels
    nothing). Worked out, an answer nobody reads held its slot to the deadline (and its
    fallback after it) while live requests waited in the queue; the pipeline counts a page
    only when it picks it, with no await after, so a read cancelled before is counted
    nowhere."""
    gone = asyncio.Event()
    pending = list(ready)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    async def app_receive() -> Message:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    work = asyncio.ensure_future(run(app_receive))
    watcher = asyncio.ensure_future(watch())
    watcher.add_done_callback(retrieve)
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work.done() or not gone.is_set() or answered():
            await work
            return False
        work.cancel()
        try:
            await work  # its cleanup done before its slot is freed
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this request cancelled too
                raise
        return True
    finally:
        watcher.cancel()
        if not work.done():  # this request cancelled: its work too, its end not waited for
            work.cancel()
            work.add_done_callback(retrieve)


class Edge:
    """Request id (echoed when well-formed, else generated), latency per route, request
    bodies read in full (bounded in size and time), and /v1 requests admitted (or shed) by
    ``admission``."""

    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        get_metrics: Callable[[], Metrics | None],
        max_body_bytes: int = 8_000_000,
        body_timeout_s: float = 10.0,
    ) -> None:
        self.app = app
        self.admission = admission
        self.get_metrics = get_metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        rid = incoming if _RID.match(incoming) else uuid.uuid4().hex
        scope["state"] = {**scope.get("state", {}), "request_id": rid}
        status = 500
        begun = False  # the response's start
        sent = False  # the whole response

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, begun, sent
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent = True
            if message["type"] == "http.response.start":
                status = message["status"]
                begun = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                if scope["path"].startswith("/v1/"):  # per member, now: never kept by a cache
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        metrics = self.get_metrics()
        started = time.perf_counter()
        try:
            if await self._handle(scope, receive, send_with_id, rid, metrics, lambda: sent):
                status = CLIENT_GONE  # the client closed the request (nginx's 499), not an error
        except asyncio.CancelledError as exc:
            # only the server's stop is answered here (uvicorn cancels the requests still
            # running when its grace ends, and answered them 500): a 503 the client may retry
            # elsewhere. Any other cancel goes on (answered, an in-process caller's timeout
            # read a 503 where its cancel was swallowed: event batches it retried piled up)
            if begun or not _stop_grace_over(exc):
                raise
            resp = error_response(Overloaded(STOPPING, 1.0), rid)
            resp.headers["Connection"] = "close"
            await resp(scope, receive, send_with_id)
            if metrics is not None:
                metrics.rejected.labels("stopping").inc()
        finally:
            if metrics is not None:
                route = scope.get("route")
                label = route.path if isinstance(route, Route) else "unmatched"
                method = scope["method"] if scope["method"] in _LABELLED_METHODS else "other"
                metrics.latency.labels(label, method, str(status)).observe(
                    time.perf_counter() - started
                )

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send_with_id: Send,
        rid: str,
        metrics: Metrics | None,
        answered: Callable[[], bool],
    ) -> bool:
        """The request past its id: its body, its admission, the app; whether its client went
        away while it was worked out (a read, cancelled then)."""
        ready: list[Message] = []  # the client's messages read here, replayed to the app
        if _declares_body(scope):
            try:
                if scope["method"] in ("GET", "HEAD"):  # not read: up to the limit each, before
                    raise BodyTooLarge(f"a {scope['method']} request takes no body")
                length = _declared_length(scope)
                if length is not None and length > self.max_body_bytes:
                    raise BodyTooLarge(f"request body larger than {self.max_body_bytes} bytes")
                body = await _read_body(receive, self.max_body_bytes, self.body_timeout_s)
            except (BodyTooLarge, BodyTimeout) as exc:  # the rest is never read: close after
                if metrics is not None:
                    reason = "body_too_large" if isinstance(exc, BodyTooLarge) else "body_timeout"
                    metrics.rejected.labels(reason).inc()
                resp = error_response(exc, rid)
                resp.headers["Connection"] = "close"
                await resp(scope, receive, send_with_id)
                return False
            if body is None:  # the client went away
                return False
            ready.append({"type": "http.request", "body": body, "more_body": False})
        bounded = scope["path"].startswith(_BOUNDED)
        if bounded and not await self.admission.acquire():
            if metrics is not None:
                metrics.rejected.labels("saturated").inc()
            resp = error_response(Overloaded("overloaded: request shed before any work", 1.0), rid)
            await resp(scope, receive, send_with_id)
            return False
        if bounded:  # the client left while it waited: nobody to answer, no work
            try:
                message = await _ready_message(receive)
            except BaseException:
                self.admission.release()
                raise
            if message is not None and message["type"] == "http.disconnect":
                self.admission.release()
                if metrics is not None:
                    metrics.rejected.labels("client_gone").inc()
                return False
            if message is not None:
                ready.append(message)
        admitted = time.perf_counter()
        if metrics is not None:
            metrics.in_flight.set(self.admission.in_flight)
            metrics.queued.set(self.admission.waiting)
            metrics.concurrency_limit.set(self.admission.limit)  # as of this request (a scrape)
        abandoned = False
        try:
            if bounded and scope["method"] == "GET":
                abandoned = await _unless_gone(
                    lambda rcv: self.app(scope, rcv, send_with_id), ready, receive, answered
                )
            else:
                await self.app(scope, _replay(ready, receive) if ready else receive, send_with_id)
        finally:
            if bounded:
                if scope["method"] == "GET" and not abandoned:  # reads size the limit
                    self.admission.observe(time.perf_counter() - admitted)
                    if metrics is not None:
                        metrics.concurrency_limit.set(self.admission.limit)
                self.admission.release()
        return abandoned
