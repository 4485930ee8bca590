"""``LabelPolicy``: how later events label a logged candidate for learning to rank."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opendisco.signals import EVENT_TYPES

__all__ = ["MAX_GAIN", "LabelPolicy"]

#: the highest relevance level: LightGBM's default ``label_gain`` (2^i - 1) has 31 entries and
#: refuses a label past it
MAX_GAIN = 30


class LabelPolicy(BaseModel):
    """How later events label a logged candidate (relevance levels for lambdarank)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gains: dict[str, int] = Field(
        default_factory=lambda: {
            "click": 1,
            "like": 2,
            "message": 3,
            "match": 4,
            "pass": 0,
            "skip": 0,
            "hide": 0,
        },
        description="Relevance per event type (the strongest event of a candidate wins).",
    )
    window_hours: float = Field(168.0, gt=0, description="Outcomes this long after the list.")
    scope: Literal["candidates", "shown"] = Field(
        "candidates", description="Label every logged candidate, or only the shown ones."
    )

    @field_validator("gains")
    @classmethod
    def _known_gains(cls, v: dict[str, int]) -> dict[str, int]:
        """Event types only (a misspelt one would be ignored silently), each gain a relevance
        level lambdarank knows: 0 to MAX_GAIN (LightGBM's default ``label_gain`` table)."""
        unknown = sorted(set(v) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; known: {list(EVENT_TYPES)}")
        bad = {k: g for k, g in v.items() if not 0 <= g <= MAX_GAIN}
        if bad:
            raise ValueError(f"gains {bad}: each from 0 to {MAX_GAIN}")
        return v

    @classmethod
    def parse(cls, spec: str | None, **kw: Any) -> LabelPolicy:
        """``"like=2,match=4"`` over the default gains (None: the defaults)."""
        gains = dict(cls().gains)
        for part in filter(None, (p.strip() for p in (spec or "").split(","))):
            name, _, value = part.partition("=")
            if not value.strip().lstrip("-").isdigit():
                raise ValueError(f"label policy {part!r}: expected type=integer gain")
            gains[name.strip()] = int(value)
        try:
            return cls(gains=gains, **kw)
        except ValidationError as exc:  # one line per problem, not pydantic's report
            problems = "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
            raise ValueError(f"label policy {spec!r}: {problems}") from exc
