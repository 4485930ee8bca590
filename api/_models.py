"""Strict request/response models: what they declare is what the OpenAPI document publishes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from opendisco.ingest.events import EventType

__all__ = [
    "ID_PATTERN",
    "EndpointSurface",
    "ErrorBody",
    "ErrorResponse",
    "Event",
    "EventBatch",
    "EventsResponse",
    "HealthResponse",
    "Id",
    "ReadyResponse",
    "RecommendationOut",
    "RecommendationsResponse",
    "Rejected",
    "Surface",
]

# ids: 1..256 characters of a conservative charset (item ids are OpenSearch _ids too)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,255}$"
Id = Annotated[str, Field(min_length=1, max_length=256, pattern=ID_PATTERN)]


class Surface(StrEnum):
    """Surfaces of ``GET /v1/users/{user_id}/recommendations``."""

    for_you = "for_you"
    cold_start = "cold_start"
    trending = "trending"


class EndpointSurface(StrEnum):
    """Every surface the fallback keeps a list for (recommendations + similar + search)."""

    for_you = "for_you"
    cold_start = "cold_start"
    trending = "trending"
    similar = "similar"
    search = "search"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendationOut(_Strict):
    id: str
    score: float
    sources: dict[str, float] = Field(
        default_factory=dict, description="Per-source retrieval score."
    )
    item: dict[str, Any] = Field(default_factory=dict, description="Item fields (no vectors).")
    trace: list[dict[str, Any]] | None = Field(
        None, description="Per-step rerank scores (only with explain=true)."
    )


class RecommendationsResponse(_Strict):
    request_id: str
    template_version: str = Field(description="Template/variant version that produced the list.")
    surface: EndpointSurface
    degraded: bool = Field(
        description="True when the answer comes from the fallback (backend slow, down or the "
        "circuit breaker open)."
    )
    items: list[RecommendationOut]
    next_cursor: str | None = Field(
        None, description="Opaque cursor for the next page of the same session."
    )
    explain: dict[str, Any] | None = Field(
        None, description="Sources, per-step scores and rendered queries (admin keys only)."
    )


class Event(_Strict):
    """One client event (validated again, with the same rules, by the event processor)."""

    id: str = Field(
        min_length=1,
        max_length=200,
        pattern=ID_PATTERN,
        description="Client event id; a repeated id is counted once.",
    )
    type: EventType
    user_id: Id
    item_id: Id
    ts: datetime | None = Field(None, description="When it happened (default: now).")
    surface: EndpointSurface | None = None
    request_id: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9._\-]{1,64}$", description="Served list."
    )
    position: int | None = Field(None, ge=0, le=10_000)


class EventBatch(_Strict):
    events: list[Event] = Field(min_length=1, max_length=1000)


class Rejected(_Strict):
    index: int
    reason: str


class EventsResponse(_Strict):
    request_id: str
    template_version: str
    accepted: int
    duplicates: int
    rejected: list[Rejected]


class HealthResponse(_Strict):
    status: str


class ReadyResponse(_Strict):
    ready: bool
    checks: dict[str, bool]


class ErrorBody(_Strict):
    type: str
    message: str
    detail: list[dict[str, Any]] | None = None


class ErrorResponse(_Strict):
    request_id: str
    error: ErrorBody
