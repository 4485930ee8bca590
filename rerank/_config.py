"""``RerankConfig``: every tunable of the reranker in one validated value object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._steps import STEPS
from ._types import FEATURE_NAMES

__all__ = ["DEFAULT_STEPS", "MAX_KNOB", "RerankConfig", "merged_config"]

#: the largest magnitude of any number in a config: far beyond any useful weight or knob, far
#: below where a weight times a feature (or a strength times a penalty) overflows a float
#: (a popularity weight of 1e308 scored every candidate inf or NaN: an arbitrary order)
MAX_KNOB = 1e6

DEFAULT_STEPS: tuple[str, ...] = (
    "score",
    "rules",
    "fatigue",
    "exposure",
    "reciprocal",
    "pacing",
    "mmr",
    "caps",
    "pins",
)

_DEFAULT_WEIGHTS = {
    "fused": 1.0,
    "content_sim": 0.6,
    "behaviour_sim": 0.4,
    "graph": 0.2,
    "quality": 0.2,
    "popularity": 0.05,
    "freshness": 0.1,
    "n_sources": 0.05,
    # the two-sided features (reciprocal, liked_viewer, mutual) and trending weigh 0 here: the
    # reciprocal step combines both directions; the columns feed the learned scorer and tuning
}


class RerankConfig(BaseModel):
    """Tunable weights and knobs; ``get_config()``/``from_config()`` round-trip. Every number is
    finite and within ±:data:`MAX_KNOB`: a NaN weight scores every candidate NaN, a huge one
    overflows, and MongoDB documents holding a NaN (an experiment's arm, a playground draft)
    are refused by FerretDB."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    steps: tuple[str, ...] = Field(DEFAULT_STEPS, description="Named steps, run in this order.")
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(_DEFAULT_WEIGHTS),
        description="Linear model: weight per feature column (missing columns weigh 0).",
    )
    source_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Bonus added when a named candidate source proposed the item.",
    )
    # diversity
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0, description="1 = pure relevance, 0 = novelty.")
    max_per_category: int | None = Field(3, ge=1, description="Per page; None disables.")
    max_per_owner: int | None = Field(2, ge=1, description="Per page; None disables.")
    page_size: int = Field(20, ge=1, description="Items diversified (MMR, caps) at the top.")
    # exposure balancing
    exposure_strength: float = Field(0.3, ge=0.0, description="Max boost/damp toward target.")
    exposure_target: float | None = Field(
        None, ge=0.0, description="Target impressions per window; None = batch mean."
    )
    inbound_capacity: float = Field(
        5.0, gt=0.0, description="Recent likes/messages a recipient can handle."
    )
    inbound_strength: float = Field(0.5, ge=0.0, description="Damp per log-unit over capacity.")
    # two-sided markets (member rows only: neutral for one-sided catalogues; rerank._market).
    # The defaults of reciprocal_weight, inbound_capacity and reply_capacity are the marketplace
    # bench's validation pick on both simulated populations (bench/README.md, marketplace); the
    # reciprocal terms act only when a member asks (RerankContext.anonymous)
    reciprocal_mode: Literal["off", "harmonic", "product"] = Field(
        "harmonic",
        description="How the forward score and P(candidate likes the viewer back) combine: "
        "weighted harmonic mean (RECON), weighted geometric mean, or off.",
    )
    reciprocal_weight: float = Field(
        0.85, ge=0.0, le=1.0, description="Share of the backward direction (0 = one-sided)."
    )
    reciprocal_prior: float = Field(
        0.3, gt=0.0, lt=1.0, description="Prior like rate of a member without history."
    )
    reciprocal_prior_n: float = Field(
        10.0, gt=0.0, description="Pseudo-count of that prior (likes+passes it weighs as)."
    )
    reciprocal_affinity: float = Field(
        1.0, ge=0.0, description="Log-odds per standard deviation of taste-profile similarity."
    )
    reply_capacity: float | None = Field(
        1.0,
        gt=0.0,
        description="Likes a member answers per day: the reciprocal estimate's reply chance "
        "becomes congestion-aware, P(the candidate still has capacity for one more like) from "
        "the live like rate reaching them (rerank._market.reply_chance); None: the window "
        "ratio (inbound_capacity + 1) / (inbound + 1).",
    )
    pacing_strength: float = Field(
        1.0, ge=0.0, description="Largest demotion of a member running ahead of its budget."
    )
    pacing_cut: float | None = Field(
        None,
        gt=0.0,
        description="Move members whose paced exposure exceeds this multiple of their budget "
        "below the page cut (they complete the page only when too few others are eligible); "
        "None: pacing only demotes smoothly.",
    )
    pacing_boost: float = Field(
        0.0,
        ge=0.0,
        description="Largest lift of a member below the mean inbound attention with budget "
        "left (new members get all of it): a first-impression boost; 0 = off.",
    )
    # feedback fatigue
    fatigue_strength: float = Field(0.4, ge=0.0, description="Penalty per log1p(hides+passes).")
    # business rules
    require_available: bool = Field(True, description="Drop items whose `available` is false.")
    banned_categories: tuple[str, ...] = Field((), description="Never shown.")
    freshness_half_life_days: float = Field(30.0, gt=0.0)

    @field_validator("weights")
    @classmethod
    def _known_features(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; known: {list(FEATURE_NAMES)}")
        if v.get("linear"):
            raise ValueError("'linear' is the linear model's own score: it cannot be weighted")
        return v

    @model_validator(mode="after")
    def _bounded(self) -> RerankConfig:
        for name in type(self).model_fields:
            value = getattr(self, name)
            numbers = value.items() if isinstance(value, dict) else [(None, value)]
            for key, x in numbers:
                if isinstance(x, int | float) and not isinstance(x, bool) and abs(x) > MAX_KNOB:
                    where = f"{name}[{key!r}]" if key is not None else name
                    raise ValueError(f"{where} = {x:g} is beyond ±{MAX_KNOB:g}")
        return self

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in v if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}; known: {sorted(STEPS)}")
        return v

    def get_config(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RerankConfig:
        return cls.model_validate(config)

    def weight_vector(self) -> np.ndarray:
        return np.array([self.weights.get(n, 0.0) for n in FEATURE_NAMES], dtype=np.float64)


def merged_config(overrides: Mapping[str, Any]) -> RerankConfig:
    """The defaults with ``overrides`` on top, ``weights`` merged key by key (a plain
    ``from_config`` would replace the whole weights mapping, zeroing the other features)."""
    base = RerankConfig().get_config()
    out = {**base, **overrides}
    out["weights"] = {**base["weights"], **(overrides.get("weights") or {})}
    return RerankConfig.from_config(out)
