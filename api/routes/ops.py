"""Operations: liveness, readiness (both backends answer, the query encoder loaded) and
Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from .._body import StrictJSONRoute
from .._deps import RuntimeDep
from .._errors import BACKEND_RETRY_AFTER_S
from .._metrics import CONTENT_TYPE_LATEST
from .._models import HealthResponse, ReadyResponse

__all__ = ["router"]

router = APIRouter(tags=["ops"], route_class=StrictJSONRoute)


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def _answers(call: Awaitable[Any], timeout_s: float = 1.0) -> bool:
    try:
        await asyncio.wait_for(call, timeout_s)
    except Exception:
        return False
    return True


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={
        503: {
            "model": ReadyResponse,
            "description": "A backend is unreachable, or the query encoder still loads.",
        }
    },
)
async def readyz(rt: RuntimeDep) -> JSONResponse:
    """OpenSearch and MongoDB answer and the search surface's query encoder has loaded (it
    loads in the background after start-up, while the other surfaces are served: a load
    balancer holds traffic back until then); a 503 says when to ask again, like every 503 of
    the API."""
    os_ok, mongo_ok = await asyncio.gather(
        _answers(rt.os_client.cluster.health()), _answers(rt.db.command("ping"))
    )
    encoder = rt.discovery.encoder
    encoder.start()  # (a load that failed is tried again)
    checks = {"opensearch": os_ok, "mongo": mongo_ok, "encoder": encoder.loaded}
    ready = all(checks.values())
    headers = {} if ready else {"Retry-After": str(BACKEND_RETRY_AFTER_S)}
    body = {"ready": ready, "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(rt: RuntimeDep) -> PlainTextResponse:
    """Prometheus metrics (latency per route, degraded answers, breaker state, served
    impressions and lists not written, the cap list's length), of every worker when the
    server runs several."""
    rt.publish()  # this worker's now; the others' as they last published them
    return PlainTextResponse(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# a load balancer or a monitor may probe with HEAD (405 read as down); kept out of the
# schema's operations. Not the /v1 reads: each serves a member's list, logged and counted
# toward exposure (a HEAD worked out as a GET would count a list nobody saw): 405, Allow: GET
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
    router.add_api_route(_path, _probe, methods=["HEAD"], include_in_schema=False)
