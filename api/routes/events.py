"""``POST /v1/events``: a batch of events recorded once each (the client's ids dedupe)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from opendisco._exceptions import BackendError, OpenDiscoError, Overloaded

from .._body import StrictJSONRoute
from .._deps import RuntimeDep, WriteKey
from .._errors import BODY_ERRORS, ERRORS, request_id
from .._models import EventBatch, EventsResponse

__all__ = ["router"]

router = APIRouter(tags=["events"], route_class=StrictJSONRoute)


@router.post("/v1/events", response_model=EventsResponse, responses={**ERRORS, **BODY_ERRORS})
async def events(
    request: Request, rt: RuntimeDep, key: WriteKey, batch: EventBatch
) -> dict[str, Any]:
    """Record a batch of events; an event id seen before is counted once (``duplicates``), also
    when the same batch is posted concurrently (a retry after a timeout)."""
    docs = [e.model_dump(mode="python", exclude_none=True) for e in batch.events]
    try:
        res = await asyncio.wait_for(rt.discovery.record_events(docs), max(2.0, 5 * rt.deadline_s))
    except TimeoutError as exc:
        raise Overloaded("event store did not answer in time", 1.0) from exc
    except OpenDiscoError:
        raise
    except Exception as exc:
        raise BackendError(f"recording events failed: {exc!r}") from exc
    return {
        "request_id": request_id(request),
        "template_version": rt.version,
        "accepted": res.accepted,
        "duplicates": res.duplicates,
        "recovered": res.recovered,
        "in_flight": res.in_flight,
        "rejected": [{"index": i, "reason": reason} for i, reason in res.rejected],
    }
