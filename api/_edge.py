"""The pure-ASGI outer layer of the app: request id, latency histogram, admission control.

It runs before routing and before FastAPI builds anything, so shedding a request the
:class:`~opendisco.api._admission.Admission` cannot admit (503 + Retry-After) costs almost
nothing; ops endpoints (``/healthz``, ``/readyz``, ``/metrics``) are never bounded.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from opendisco._exceptions import Overloaded

from ._admission import Admission
from ._errors import error_response
from ._metrics import Metrics

__all__ = ["Edge"]

_RID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
#: the paths whose requests go through admission control
_BOUNDED = "/v1/"


class Edge:
    """Request id (echoed when well-formed, else generated), latency per route, and /v1
    requests admitted (or shed) by ``admission``."""

    def __init__(
        self, app: ASGIApp, admission: Admission, get_metrics: Callable[[], Metrics | None]
    ) -> None:
        self.app = app
        self.admission = admission
        self.get_metrics = get_metrics

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

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        metrics = self.get_metrics()
        started = time.perf_counter()
        bounded = scope["path"].startswith(_BOUNDED)
        if bounded and not await self.admission.acquire():
            if metrics is not None:
                metrics.rejected.labels("saturated").inc()
            resp = error_response(Overloaded("overloaded: request shed before any work", 1.0), rid)
            await resp(scope, receive, send_with_id)
            return
        admitted = time.perf_counter()
        if metrics is not None:
            metrics.in_flight.set(self.admission.in_flight)
            metrics.queued.set(self.admission.waiting)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if bounded:
                if scope["method"] == "GET":  # reads size the limit (event writes vary)
                    self.admission.observe(time.perf_counter() - admitted)
                self.admission.release()
            if metrics is not None:
                route = scope.get("route")
                label = route.path if isinstance(route, Route) else "unmatched"
                metrics.latency.labels(label, scope["method"], str(status)).observe(
                    time.perf_counter() - started
                )
