"""An experiment as data: what ``opendisco experiments create FILE`` reads and MongoDB keeps.

An :class:`Experiment` has an ``id``, a ``salt`` (its randomisation; changing it re-shuffles
every unit), a ``layer`` and a ``traffic`` share of that layer, ``arms`` (each an override of
the served artifacts: template params, rerank config, model file, template version files; the
first arm is the control), a ``design`` (the randomisation unit, see :class:`Design`),
pre-registered ``metrics`` (the first is primary) and its lifecycle (``draft → running →
stopped`` with the ``start``/``stop`` times).

Designs and what an arm may change:

=============  =============================  ==========================================
design         randomisation unit             the treatment applies to
=============  =============================  ==========================================
``user``       the viewer                     the viewer's whole request
``item``       the candidate                  the candidate, in every viewer's list
``two_sided``  viewer and candidate, apart    treated viewer × treated candidate pairs
``cluster``    cluster of the mutual-like /   every request of the cluster's members
               co-engagement graph (Louvain,
               snapshotted at start)
``switchback`` (region, time period)          every request in that region and period
=============  =============================  ==========================================

``item`` and ``two_sided`` place candidates of both arms in one list (each at its own arm's
rank, :mod:`._merge`): only two arms, and the arms may change the ranking only (``rerank``,
``model``), not the candidate generation (``params``) that the list shares.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from opendisco._domain import ID_PATTERN, Surface
from opendisco._exceptions import InvalidInput
from opendisco.serving import check_params

from ._metrics import METRICS

__all__ = [
    "BUCKETS",
    "MIN_TRAFFIC",
    "PAIR_LEVEL",
    "Arm",
    "Design",
    "DesignKind",
    "Experiment",
    "Status",
    "Traffic",
]


class DesignKind(StrEnum):
    user = "user"
    item = "item"
    two_sided = "two_sided"
    cluster = "cluster"
    switchback = "switchback"


#: the longest graph window or switchback period a design may name (ten years)
MAX_DAYS = 3660
#: the largest TSRI-k (Johari et al. 2022 use k = 1 and 2)
MAX_TSRI_K = 10.0
#: Louvain's resolution range: below it one cluster holds every member (no contrast), above
#: it each member is a cluster of its own (the user design, with a cluster design's costs)
MIN_RESOLUTION = 0.01
MAX_RESOLUTION = 100.0
#: the most units of a stratum (more than there are units: one stratum, complete
#: randomisation)
MAX_STRATA = 100_000

#: the buckets of a layer (:func:`~opendisco.experiments.bucket`): an experiment owns a whole
#: number of them, so its traffic is a multiple of one bucket's share
BUCKETS = 10_000
MIN_TRAFFIC = 1 / BUCKETS
#: how far ``traffic × BUCKETS`` may be off a whole number (decimal fractions in binary)
_BUCKET_SLACK = 1e-6


def _whole_buckets(value: float, info: ValidationInfo) -> float:
    """A traffic share that is a whole number of buckets: 0.12345 was served as 1234 of
    them (rounded), 5e-324 as one. Stored experiments are read as they were stored
    (``context={"stored": True}``: written by a version that rounded)."""
    if info.context and info.context.get("stored"):
        return value
    buckets = value * BUCKETS
    if abs(buckets - round(buckets)) > _BUCKET_SLACK:
        raise ValueError(
            f"traffic {value!r} is {buckets:g} of a layer's {BUCKETS} buckets: give a "
            f"multiple of {MIN_TRAFFIC:g}"
        )
    return value


def _within_when_new(lo: float, hi: float) -> AfterValidator:
    """A design bound checked when an experiment is created, not when a stored one is read:
    an experiment a version without the bound stored stays readable (a running one that
    became unreadable would drop its members out of their arms mid-experiment)."""

    def check(value: float, info: ValidationInfo) -> float:
        if info.context and info.context.get("stored"):
            return value
        if not lo <= value <= hi:
            raise ValueError(f"must be within [{lo:g}, {hi:g}], got {value!r}")
        return value

    return AfterValidator(check)


#: an experiment's share of its layer's members: a JSON number in [1e-4, 1], whole buckets
Traffic = Annotated[
    float,
    Field(ge=MIN_TRAFFIC, le=1, strict=True, allow_inf_nan=False),
    AfterValidator(_whole_buckets),
]

#: designs whose lists mix arms per candidate
PAIR_LEVEL = frozenset({DesignKind.item, DesignKind.two_sided})


class Status(StrEnum):
    draft = "draft"
    running = "running"
    stopped = "stopped"


class _Strict(BaseModel):
    #: finite numbers only: FerretDB refuses to store NaN or infinity (closing the connection
    #: on a NaN), so such a value is a validation error rather than a failed write; unknown
    #: fields refused; every number field ``strict=True`` (a number, never "5" or true)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Arm(_Strict):
    """One variant: overrides on top of what the pipeline serves (nothing = as served)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_\-]{0,31}$")
    weight: float = Field(
        1.0,
        gt=0,
        le=1e6,
        strict=True,
        allow_inf_nan=False,
        description="Relative share of its units.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Template parameter overrides (like a params file)."
    )
    rerank: dict[str, Any] = Field(
        default_factory=dict,
        description="RerankConfig overrides (weights merged key by key, like a params file).",
    )
    model: str | None = Field(None, description="Ranking model file (None: the served one).")
    templates: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Template version files (``template-<surface>-v<N>.json``, what the "
        "playground promotes) served instead of the served template of their surface. Loaded "
        "guarded, as every non-shipped template: the hard filter wraps each query and the "
        "parameters every request sets stay declared (opendisco.serving.load_template).",
    )

    @model_validator(mode="after")
    def _checked(self) -> Arm:
        """The overrides a params file may make, checked the same way: no arm overrides a
        parameter every request sets (the hard rules: viewer preferences, exclusions, caps)."""
        try:
            check_params({"template_params": self.params, "rerank": self.rerank})
        except InvalidInput as exc:
            raise ValueError(f"arm {self.name!r}: {exc}") from exc
        return self

    @property
    def overrides(self) -> bool:
        return bool(self.params or self.rerank or self.model or self.templates)


class Design(_Strict):
    kind: DesignKind = DesignKind.user
    #: two_sided: share of candidates (a_L) and, when set, of viewers (a_C; default: the
    #: arms' weights) randomised into the treatment arm, and the weight β of the viewer-side
    #: contrast in the interpolating estimator — all pre-registered from the pre-period's
    #: market balance by :func:`~opendisco.experiments.two_sided_plan` (Johari et al. 2022:
    #: demand-constrained → a_L → 1, β → 1; supply-constrained → a_C → 1, β → 0)
    candidate_share: float = Field(0.5, gt=0, lt=1, strict=True)
    viewer_share: float | None = Field(None, gt=0, lt=1, strict=True)
    tsri_beta: float = Field(0.5, ge=0, le=1, strict=True)
    #: the k of Johari et al.'s TSRI-k: the estimator adds k·β(1 − β) times the two
    #: cross-cell spillovers (r₀₁ − r₀₀) + (r₁₀ − r₀₀); 0 is the plain interpolation
    #: (bounded: past a few the spillover term is the estimate; a huge k overflowed it to
    #: infinity, a readout no store keeps)
    tsri_k: Annotated[float, Field(ge=0, strict=True), _within_when_new(0, MAX_TSRI_K)] = 0.0
    #: cluster: Louvain resolution (lower = fewer, larger clusters) and the graph's window
    #: (bounded: a date cannot go back further than year 1, MongoDB stores 8-byte ints)
    resolution: Annotated[
        float, Field(gt=0, strict=True), _within_when_new(MIN_RESOLUTION, MAX_RESOLUTION)
    ] = 1.0
    graph_days: int = Field(30, ge=1, le=MAX_DAYS, strict=True)
    #: switchback: the member field naming the region (a top-level field of ``users``: it
    #: is projected from there), the period and the burn-in dropped
    region_field: str = Field("location", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    period_minutes: int = Field(60 * 24, ge=1, le=MAX_DAYS * 24 * 60, strict=True)
    burn_in_minutes: int = Field(0, ge=0, le=MAX_DAYS * 24 * 60, strict=True)
    #: cluster and switchback: 0 assigns each unit apart (Bernoulli by the arms' weights);
    #: n (two units of the smallest arm at least) randomises completely within strata of n
    #: units of similar pre-period size and outcome rate, taken at start (clusters;
    #: switchback regions, in every period): :mod:`~opendisco.experiments._strata`
    #: (bounded: past MongoDB's 8-byte ints the create failed with a traceback)
    strata: Annotated[int, Field(ge=0, strict=True), _within_when_new(0, MAX_STRATA)] = 0

    @model_validator(mode="after")
    def _burn_in_shorter(self) -> Design:
        if self.kind == DesignKind.switchback and self.burn_in_minutes >= self.period_minutes:
            raise ValueError("burn_in_minutes must be shorter than period_minutes")
        return self


class Experiment(_Strict):
    id: str = Field(pattern=ID_PATTERN, max_length=64)
    name: str = ""
    salt: str = Field("", max_length=128, description="Randomisation salt (default: the id).")
    layer: str = Field("default", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    traffic: Traffic = Field(1.0, description="Share of the layer's members (whole buckets).")
    arms: list[Arm] = Field(min_length=2, max_length=8)
    design: Design = Field(default_factory=Design)
    metrics: list[str] = Field(
        default_factory=lambda: ["mutual_likes_per_1000"], min_length=1, max_length=16
    )
    surfaces: list[str] = Field(default_factory=lambda: ["for_you", "cold_start"], min_length=1)
    status: Status = Status.draft
    start: datetime | None = None
    stop: datetime | None = None
    #: the layer range it owns, ``[offset, offset + traffic * 10^4)``, set when it starts
    offset: int | None = Field(None, ge=0, lt=BUCKETS, strict=True)

    @model_validator(mode="after")
    def _valid(self) -> Experiment:
        if not self.salt:
            self.salt = self.id
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique: {names}")
        if self.design.viewer_share is not None and self.design.kind != DesignKind.two_sided:
            raise ValueError("viewer_share is a two_sided setting (other designs: arm weights)")
        if self.design.kind in PAIR_LEVEL:
            if len(self.arms) != 2:
                raise ValueError(f"{self.design.kind.value}: exactly two arms (control, treatment)")
            bad = [a.name for a in self.arms if a.params or a.templates]
            if bad:
                raise ValueError(
                    f"{self.design.kind.value}: arms {bad} change template params or "
                    "templates; a list mixing arms shares its candidates, so only "
                    "rerank/model may differ"
                )
        strata = self.design.strata
        if strata and self.design.kind not in (DesignKind.cluster, DesignKind.switchback):
            raise ValueError("strata: a cluster or switchback setting")
        if strata:
            need = 2 * sum(a.weight for a in self.arms) / min(a.weight for a in self.arms)
            if not math.isfinite(need) or strata < math.ceil(need):
                raise ValueError(f"strata: at least two units of each arm per stratum ({need:.0f})")
        if self.design.kind in (DesignKind.cluster, DesignKind.switchback) and self.traffic < 1:
            raise ValueError(
                f"{self.design.kind.value}: traffic must be 1 (a cluster or region is "
                "randomised whole; give the experiment its own layer)"
            )
        return self

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
        return v

    @field_validator("surfaces")
    @classmethod
    def _surfaces(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in set(Surface)]
        if unknown:  # a misspelt surface: an experiment that never applies
            raise ValueError(f"unknown surface(s) {unknown}; known: {[s.value for s in Surface]}")
        return v

    @property
    def control(self) -> Arm:
        return self.arms[0]

    @property
    def pair_level(self) -> bool:
        return self.design.kind in PAIR_LEVEL

    @property
    def width(self) -> int:
        """Buckets of its layer it owns (of 10^4)."""
        return max(1, round(self.traffic * BUCKETS))

    def to_doc(self) -> dict[str, Any]:
        doc = self.model_dump(mode="python")
        doc["_id"] = doc.pop("id")
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Experiment:
        d = {k: v for k, v in doc.items() if k != "_id"}
        return cls.model_validate({"id": doc["_id"], **d}, context={"stored": True})
