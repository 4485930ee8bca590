"""Strict request/response models: what they declare is what the OpenAPI document publishes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opendisco._domain import Surface
from opendisco.signals import Event

__all__ = [
    "MAX_BATCH_ERRORS",
    "ErrorBody",
    "ErrorResponse",
    "EventBatch",
    "EventsResponse",
    "HealthResponse",
    "ReadyResponse",
    "RecommendationOut",
    "RecommendationsResponse",
    "Rejected",
    "StrictModel",
]


class StrictModel(BaseModel):
    """Every model the API reads or answers: a field it does not declare is a 422 naming it,
    never ignored. A number field is declared ``Field(strict=True)`` (a JSON number, never
    ``"5"`` or ``true``): what the published schema says is what is accepted."""

    model_config = ConfigDict(extra="forbid")


class RecommendationOut(StrictModel):
    id: str
    score: float
    sources: dict[str, float] = Field(
        default_factory=dict, description="Per-source retrieval score."
    )
    item: dict[str, Any] = Field(default_factory=dict, description="Item fields (no vectors).")
    trace: list[dict[str, Any]] | None = Field(
        None, description="Per-step rerank scores (only with explain=true)."
    )


class RecommendationsResponse(StrictModel):
    request_id: str
    template_version: str = Field(
        description="What produced the list: the surface's template version and the serving "
        "artifacts (params file, model)."
    )
    surface: Surface
    degraded: bool = Field(
        description="True when the answer comes from the fallback (backend slow, down or the "
        "circuit breaker open). A degraded answer obeys every hard rule a served one does."
    )
    degraded_rules: list[str] = Field(
        default_factory=list,
        description="Hard rules this answer could not check against current data (only ever "
        "in degraded answers): 'exposure_cap' when the cap list is a stale snapshot or unknown. "
        "Rules that cannot be checked at all make the answer 503, never an unsafe list.",
    )
    items: list[RecommendationOut]
    next_cursor: str | None = Field(
        None, description="Opaque cursor for the next page of the same session."
    )
    explain: dict[str, Any] | None = Field(
        None, description="Sources, per-step scores and rendered queries (admin keys only)."
    )
    experiments: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Experiments the list took part in: experiment, arm, design, unit, "
        "cluster/period and, for item/two-sided designs, each shown candidate's arm.",
    )


#: the most validation errors worked out for an event batch, about its first events (and
#: the last one's all): every wrong field of every event was, 1000 events with 700 unknown
#: fields each (7.6 MB) took 13.6 s on the event loop, every other request waiting, and
#: answered a 72 MB 422
MAX_BATCH_ERRORS = 100
MAX_BATCH = 1000


class EventBatch(StrictModel):
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)

    @field_validator("events", mode="before")
    @classmethod
    def _first_errors(cls, value: Any) -> Any:
        """The events validated one by one, up to the event whose errors reach
        :data:`MAX_BATCH_ERRORS`: the batch is cut after it (invalid all the same, its 422
        naming the errors of the events up to there). The valid ones are handed on as
        :class:`Event`, not validated again."""
        if not isinstance(value, list) or len(value) > MAX_BATCH:
            return value  # the field's own checks say why
        out: list[Any] = []
        errors = 0
        for raw in value:
            try:
                out.append(Event.model_validate(raw))
            except ValidationError as exc:
                out.append(raw)  # validated again by the field: its errors, where they are
                errors += exc.error_count()
                if errors >= MAX_BATCH_ERRORS:
                    break
        return out


class Rejected(StrictModel):
    index: int
    reason: str


class EventsResponse(StrictModel):
    request_id: str
    template_version: str
    accepted: int = Field(description="Applied by this call.")
    duplicates: int = Field(
        description="Applied before (by an earlier or a concurrent call) or repeated in the batch."
    )
    recovered: int = Field(
        0, description="Left unapplied by a call that died (its claim expired); applied now."
    )
    in_flight: int = Field(
        0, description="Another call holds them and was still applying them: retry to confirm."
    )
    rejected: list[Rejected]


class HealthResponse(StrictModel):
    status: str


class ReadyResponse(StrictModel):
    ready: bool
    checks: dict[str, bool]


class ErrorBody(StrictModel):
    type: str
    message: str
    detail: list[dict[str, Any]] | None = None


class ErrorResponse(StrictModel):
    request_id: str
    error: ErrorBody
