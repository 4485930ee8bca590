"""The event: one definition of what a client reports (the API and the processor share it).

An event is validated once, by :class:`Event` (pydantic): the API publishes it in its OpenAPI
document and rejects a bad one with 422; :func:`validate_event` applies the same model plus
the time rules (no future beyond the tolerated skew, nothing older than the retention) to
each event of a batch posted through any path (API, CLI, evaluation replay).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opendisco._domain import Id, Surface
from opendisco._exceptions import EventInvalid

from ._user_state import UserStateConfig

__all__ = [
    "EVENT_TYPES",
    "INBOUND_TYPES",
    "ITEM",
    "ITEM_FIELDS",
    "MUTUAL_TYPES",
    "REQUEST_ID_PATTERN",
    "Event",
    "EventType",
    "EventsConfig",
    "EventsResult",
    "about",
    "reuse_reason",
    "stored_about",
    "stored_event",
    "validate_batch",
    "validate_event",
]

EventType = Literal["impression", "click", "like", "pass", "skip", "hide", "match", "message"]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
#: events that are attention a recipient receives (two-sided markets: profiles only)
INBOUND_TYPES = frozenset({"like", "match", "message"})
#: events that are a like between two members (mutual likes are matches)
MUTUAL_TYPES = frozenset({"like", "match"})
#: request ids: what the API issues (``X-Request-ID``) and events refer back to
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"
#: how an event time starts: a date and a time (``T``, or a space as RFC 3339 allows)
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


class EventsConfig(BaseModel):
    """Weights and retention of events (pydantic, ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "impression": 0.0,
            "click": 0.5,
            "like": 1.0,
            "match": 2.0,
            "message": 1.0,
            "pass": -0.5,
            "skip": -0.5,
            "hide": -1.0,
        },
        description="Signed weight per event type (positive → positives, negative → negatives).",
    )
    ttl_days: float = Field(30.0, gt=0, description="Raw events expire after this many days.")
    max_future_skew_s: float = Field(300.0, ge=0, description="Tolerated client clock skew.")
    graph_fanout: int = Field(20, ge=0, description="Recent positives a new positive links to.")
    require_known_items: bool = Field(
        True, description="Reject events for items MongoDB does not hold (nor the engine)."
    )
    max_batch: int = Field(1000, ge=1)
    purge_every_s: float = Field(300.0, gt=0, description="Purge cadence without TTL indexes.")
    user_state: UserStateConfig = Field(default_factory=UserStateConfig)


class Event(BaseModel):
    """One client event; ``id`` is the client's idempotency key."""

    # strings as written: stripping made " e1 " and "e1\n" one id (the second event counted
    # a duplicate, never recorded) and "u1\n" member u1, where the published patterns say 422
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,199}$",
        description=(
            "Client event id; a repeated id is counted once (a retry). An id names one event:"
            " reused for another type, member or item, the event is rejected."
        ),
    )
    type: EventType
    user_id: Id
    item_id: Id
    ts: datetime | None = Field(None, description="When it happened (default: now).")
    surface: Surface | None = None
    request_id: str | None = Field(
        None, max_length=64, pattern=REQUEST_ID_PATTERN, description="The served list."
    )
    position: int | None = Field(None, ge=0, le=10_000, description="0-based slot in it.")
    # strict: what the OpenAPI document publishes (a JSON number, never true or "0.5")
    features: list[Annotated[float, Field(strict=True, allow_inf_nan=False)]] | None = Field(
        None,
        max_length=64,
        description="Feature row the ranker scored (learning to rank); finite numbers only.",
    )

    @field_validator("position", mode="before")
    @classmethod
    def _a_json_integer(cls, v: Any) -> Any:
        # JSON Schema's integer takes 3 and 3.0, never true or "3" (lax pydantic took both)
        if isinstance(v, bool | str):
            raise ValueError("a JSON integer, not a boolean or a string")
        return v

    @field_validator("ts", mode="before")
    @classmethod
    def _not_a_number(cls, v: Any) -> Any:
        # seconds or milliseconds? an ISO-8601 string says; lax pydantic also read digits in
        # a string ("1764760000") as either, by their size, and a bare date as midnight
        if isinstance(v, int | float) or (isinstance(v, str) and not _DATE_TIME.match(v)):
            raise ValueError("an ISO-8601 date-time string (a date and a time), not a number")
        return v

    @field_validator("ts")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        try:
            return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59:59-05:00 is past datetime.max in UTC
            raise ValueError("out of the representable range once converted to UTC") from None


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


#: what the effects of an event need of its item but the vectors (an event keeps them: ITEM)
ITEM_FIELDS = ("kind", "owner_id", "category")
#: the field of a stored event holding its item's :data:`ITEM_FIELDS` as they were when it was
#: stored: a retry or a sweep completes it from them once the item is deleted from MongoDB
#: itself (``_event_items.stored_about_gone``)
ITEM = "item"


def stored_event(
    ev: Event, weight: float, now: datetime, items: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Pure: the ``events`` document of ``ev`` (``_id`` its id) with its weight, arrival and
    what its effects need of its item (of ``items``, as they were read for it)."""
    doc = {**ev.model_dump(exclude_none=True), "_id": ev.id, "weight": weight, "received_at": now}
    doc.pop("id", None)
    item = items.get(ev.item_id) or {}
    if facts := {f: item[f] for f in ITEM_FIELDS if item.get(f) is not None}:
        doc[ITEM] = facts
    return doc


def validate_event(raw: Any, now: datetime, cfg: EventsConfig) -> Event:
    """Pure validation; raises :class:`EventInvalid` with a readable reason."""
    if not isinstance(raw, Mapping):
        raise EventInvalid(f"event must be an object, got {type(raw).__name__}")
    try:
        ev = Event.model_validate(dict(raw))
    except ValidationError as exc:
        raise EventInvalid(_reason(exc)) from None
    if ev.ts is None:
        ev = ev.model_copy(update={"ts": now})
    assert ev.ts is not None
    if ev.ts > now + timedelta(seconds=cfg.max_future_skew_s):
        raise EventInvalid(f"ts: {ev.ts.isoformat()} is in the future")
    if ev.ts < now - timedelta(days=cfg.ttl_days):
        raise EventInvalid(f"ts: older than the {cfg.ttl_days:g}-day retention")
    return ev


def about(ev: Event) -> tuple[str, str, str]:
    """Pure: what an event is about, ``(type, user_id, item_id)``: a retry repeats it, another
    event with its id does not."""
    return (ev.type, ev.user_id, ev.item_id)


def stored_about(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    """Pure: :func:`about` of a stored ``events`` document."""
    return (str(doc.get("type")), str(doc.get("user_id")), str(doc.get("item_id")))


def reuse_reason(first: tuple[str, str, str], posted: Event) -> str:
    """The rejection of ``posted``, whose id names another event (``first``: what that one
    is about). Another member's event is not described: ids are one namespace
    for every key, and what it is about is that member's (the reason of a reused id told the
    poster ``('hide', 'sb', 'p-sv')``: that sb blocked p-sv's member)."""
    if first[1] != posted.user_id:
        return "id: already used by another member's event (an id names one event, never reused)"
    return f"id: already used by another event {first} (an id names one event, never reused)"


def validate_batch(
    events: Sequence[Any], now: datetime, cfg: EventsConfig, out: EventsResult
) -> list[tuple[int, Event]]:
    """``(index, event)`` of the valid events of a batch (no I/O); the others are added to
    ``out.rejected`` with the reason. An id may still appear more than once: which event it
    names is settled once the reads have rejected what they reject
    (:func:`~._event_items.one_per_id`)."""
    valid: list[tuple[int, Event]] = []
    for i, raw in enumerate(events):
        try:
            valid.append((i, validate_event(raw, now, cfg)))
        except EventInvalid as exc:
            out.rejected.append((i, str(exc)))
    return valid


@dataclass
class EventsResult:
    """What one call did with each event it was given: ``accepted`` (claimed and applied by
    this call), ``duplicates`` (applied before, by an earlier or a concurrent call, or repeated
    within the batch), ``recovered`` (left unapplied by a call that died; applied by this one),
    ``in_flight`` (another call holds them and was still applying when this one answered),
    ``rejected`` (index, reason)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    recovered: int = 0  # claimed by a call that died (claim expired): taken over, applied now
    in_flight: int = 0  # another live call is still applying them (``events_claim_wait_s``)
    capped: list[str] = field(default_factory=list)
    mutual: list[tuple[str, str]] = field(default_factory=list)
    took_ms: float = 0.0
    #: index of an event → the indices of its repeats within the batch (``_event_items.one_per_id``)
    repeats: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def settle_repeats(self) -> None:
        """Answer each repeat within the batch as its first: rejected with its reason when
        the first was rejected, else a duplicate (counted a duplicate, the repeat of an event
        rejected as about an unknown item read as applied — nothing was stored for it:
        bench/chaos.py, seed 31); then ``rejected`` in batch order."""
        why = dict(self.rejected)
        for first, more in self.repeats.items():
            if first in why:
                self.rejected += [(j, why[first]) for j in more]
            else:
                self.duplicates += len(more)
        self.repeats = {}
        self.rejected.sort()

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{"index": i, "reason": r} for i, r in self.rejected],
            "recovered": self.recovered,
            "in_flight": self.in_flight,
            "capped": self.capped,
            "took_ms": round(self.took_ms, 2),
        }
