"""Exposure pacing: a feedback controller steering members' exposure budgets toward a target
distribution of inbound attention.

What is controlled: the exposure budget for an exposure window, in multiples of the mean
impressions per member (:attr:`PacingState.budget`); each member's own budget is that,
scaled down in proportion for members who already receive more than the mean inbound
attention (:attr:`PacingState.mean_inbound`), and the reranker's ``pacing`` step demotes a
member smoothly once it runs ahead of the elapsed share of its budget
(``opendisco.rerank._market``). What is measured: the inbound attention (likes, matches,
messages received in ``inbound_days``) of every member — its top-1% share and Gini
(:func:`attention_stats`). The controller (:func:`pacing_step`) is integral in log space::

    error    = clip(max over the configured targets of (measured / target − 1), −1, 1)
    integral ← clip(integral − gain · error, log budget_min, log budget_max)   (anti-windup)
    budget   = clip(exp(integral − kp · error), budget_min, budget_max)

(``kp`` = 0: a pure integral controller, the budget is the clamped integral). The integral is
clamped to the budget's range — anti-windup: a controller held at its floor by a target out of
reach does not accumulate error it would have to unwind, so it loosens as soon as the market
comes back within the targets; the proportional term reacts to the current error on top.
So the budget tightens while attention is more concentrated than the targets allow and
loosens back (to ``budget_max``, where it rarely binds) once they are met — pacing costs
nothing where the market is already spread. Budgets bind popular members first (they spend
fastest), which is what moves attention to the others.

**The attention cap** (``attention_cap``, :func:`cap_step`): a second controller whose
setpoint is the top-1% share itself, acting only on the members at the top. It sets a ceiling
θ on a member's inbound attention, in multiples of the mean (:attr:`PacingState.attention_cap`),
and the pacing step moves a member whose inbound attention exceeds θ below the page cut, the
most over first last (the member's budget is its own paced rate × θ / its attention: reduced in
proportion to the excess). θ is integral in log space, per day of elapsed time (so its gain
does not depend on the control period)::

    w ← clip(w − cap_gain · Δt_days · error, log cap_min, log cap_max)     θ = mean · e^w

started at the water level (:func:`water_level`: the cap that, applied to the measured counts,
gives the target share). It reads only the inbound attention the pipeline already has per
candidate (no extra round trip); the impressions that feed it are the served ones.

:class:`PacingController` is the I/O around it for a serving process: the state lives in
MongoDB ``pacing`` (one document); every ``pacing_control_s`` one process (under a lease)
measures — one scan of ``inbound`` for the window, one count of member profiles, one sum over
the exposure counters — steps and writes it; every process re-reads it at that cadence in the
background and serves :meth:`PacingController.budget` from memory (no round trip on the hot
path). Until a first measurement exists the budget is None (pacing off).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from opendisco._backend import backend_errors, whole_search
from opendisco._exceptions import BackendError
from opendisco._settings import PACING_CAP_MAX, Settings
from opendisco._store import age_s, lease

from ._exposure import ExposureStore
from ._inbound import InboundCounter

__all__ = [
    "PACING",
    "PacingController",
    "PacingState",
    "PacingTargets",
    "attention_stats",
    "cap_step",
    "pacing_step",
    "water_level",
]

PACING = "pacing"
PACING_LOCKS = "pacing_locks"
_DOC_ID = "controller"
log = logging.getLogger("opendisco.signals")


@dataclass(frozen=True)
class PacingTargets:
    """Ceilings on the concentration of inbound attention, and the controller's range."""

    top1_share: float | None = 0.05
    gini: float | None = None
    budget_min: float = 1.0
    budget_max: float = 8.0
    gain: float = 0.5
    kp: float = 0.0
    #: the attention cap (steered by ``top1_share``): off, or its gain per day of elapsed time
    attention_cap: bool = False
    cap_gain: float = 1.0
    cap_min: float = 1.0  # tightest cap, in multiples of the mean inbound attention
    cap_max: float = PACING_CAP_MAX  # loosest (where it starts when the share is within target)

    @classmethod
    def from_settings(cls, s: Settings) -> PacingTargets:
        return cls(
            top1_share=s.pacing_target_top1_share,
            gini=s.pacing_target_gini,
            budget_min=s.pacing_budget_min,
            budget_max=s.pacing_budget_max,
            gain=s.pacing_gain,
            kp=s.pacing_kp,
            attention_cap=s.pacing_attention_cap,
            cap_gain=s.pacing_cap_gain,
            cap_min=s.pacing_cap_min,
        )


@dataclass(frozen=True)
class PacingState:
    """The controller's output (``budget``) and what it last measured."""

    budget: float
    #: the controller's integral, log budget (None: not stepped yet, log ``budget``)
    integral: float | None = None
    mean_exposure: float = 0.0  # impressions per member in the current window
    mean_inbound: float = 0.0  # inbound attention per member in the measurement window
    top1_share: float = 0.0
    gini: float = 0.0
    members: int = 0
    steps: int = 0
    updated_at: datetime | None = None
    #: log of the attention cap in multiples of ``mean_inbound`` (None: no cap)
    cap_log: float | None = None

    @property
    def attention_cap(self) -> float | None:
        """The ceiling on a member's inbound attention (None: no cap, or nothing measured)."""
        if self.cap_log is None or self.mean_inbound <= 0:
            return None
        return self.mean_inbound * math.exp(self.cap_log)

    @property
    def impressions(self) -> float | None:
        """The budget in impressions per member per window (None before a measurement)."""
        if self.steps == 0 or self.mean_exposure <= 0:
            return None
        return self.budget * self.mean_exposure

    def to_doc(self) -> dict[str, Any]:
        return {"_id": _DOC_ID, **asdict(self)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None, default_budget: float) -> PacingState:
        if not doc:
            return cls(budget=default_budget)
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in fields})


def attention_stats(counts: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Pure: ``(top-1% share, Gini)`` of attention counts over members (zeros included);
    ``(0, 0)`` when nobody received any. The top 1% is at least one member."""
    x = np.sort(np.maximum(np.asarray(counts, dtype=np.float64), 0.0))
    n, total = x.shape[0], float(x.sum()) if x.size else 0.0
    if n == 0 or total <= 0:
        return 0.0, 0.0
    top = max(1, math.ceil(0.01 * n))
    share = float(x[-top:].sum()) / total
    gini = float((2.0 * np.arange(1, n + 1) - n - 1) @ x) / (n * total)
    return share, gini


def pacing_error(top1_share: float, gini: float, targets: PacingTargets) -> float:
    """Pure: the largest relative excess over the configured ceilings (negative: under all)."""
    errs = [
        measured / target - 1.0
        for measured, target in ((top1_share, targets.top1_share), (gini, targets.gini))
        if target is not None
    ]
    return max(errs) if errs else -1.0


def water_level(counts: Sequence[float] | np.ndarray, target: float) -> float | None:
    """Pure: the cap θ on every member's count such that the top-1% share of ``min(counts,
    θ)`` is ``target`` (None: the counts are within it uncapped). The share is nondecreasing
    in θ (raising it adds only to the members above it, the top first), so a bisection finds
    it; when no cap reaches the target (fewer members with attention than 1 / target), the
    smallest cap tried, a hundredth of the largest count."""
    x = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    if x.size == 0 or attention_stats(x)[0] <= target:
        return None
    top = max(1, math.ceil(0.01 * x.shape[0]))
    head = np.sort(x)[-top:]
    lo, hi = 0.01 * float(head[-1]), float(head[-1])
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        capped = np.minimum(x, mid).sum()
        if float(np.minimum(head, mid).sum()) / capped > target:
            hi = mid
        else:
            lo = mid
    return lo


def cap_step(
    cap_log: float | None,
    counts: np.ndarray,
    share: float,
    targets: PacingTargets,
    dt_days: float,
) -> float | None:
    """Pure: the attention cap's next log level (see the module docstring); None when the cap
    is off or nobody received attention. The first step starts at the water level (or at the
    loosest cap when the share is within the target)."""
    mean = float(np.mean(counts)) if len(counts) else 0.0
    if not targets.attention_cap or targets.top1_share is None or mean <= 0:
        return None
    lo, hi = math.log(targets.cap_min), math.log(targets.cap_max)
    if cap_log is None:
        level = water_level(counts, targets.top1_share)
        return hi if level is None else min(max(math.log(level / mean), lo), hi)
    err = min(max(share / targets.top1_share - 1.0, -1.0), 1.0)
    return min(max(cap_log - targets.cap_gain * dt_days * err, lo), hi)


def pacing_step(
    state: PacingState,
    counts: Sequence[float] | np.ndarray,
    mean_exposure: float,
    targets: PacingTargets,
    now: datetime | None = None,
    dt_days: float = 1.0,
) -> PacingState:
    """Pure: one controller step from the measured inbound ``counts`` (one per member);
    ``dt_days`` is the time since the last step (the attention cap's gain is per day)."""
    share, gini = attention_stats(counts)
    # the relative error is clipped to ±1: a market far off target moves by at most e^gain per
    # step (what it responds with is only seen at the next measurement)
    err = min(max(pacing_error(share, gini, targets), -1.0), 1.0)
    lo, hi = math.log(targets.budget_min), math.log(targets.budget_max)
    integral = state.integral if state.integral is not None else math.log(state.budget)
    integral = min(max(integral - targets.gain * err, lo), hi)
    x = min(max(integral - targets.kp * err, lo), hi)
    # at either bound exactly the bound (exp(log b) may differ from b in the last bit)
    budget = targets.budget_min if x <= lo else targets.budget_max if x >= hi else math.exp(x)
    return replace(
        state,
        budget=budget,
        integral=integral,
        mean_exposure=float(mean_exposure),
        mean_inbound=float(np.mean(counts)) if len(counts) else 0.0,
        top1_share=share,
        gini=gini,
        members=len(counts),
        steps=state.steps + 1,
        updated_at=now or datetime.now(UTC),
        cap_log=cap_step(state.cap_log, np.asarray(counts, float), share, targets, dt_days),
    )


class PacingController:
    """The controller's state for a serving process (see the module docstring)."""

    lease_s = 120.0
    #: a forced step waits this long for a step in progress elsewhere (an unforced one: never)
    force_wait_s = 30.0

    def __init__(
        self,
        settings: Settings,
        db: Any,
        exposure: ExposureStore,
        *,
        inbound_days: int = 7,
        targets: PacingTargets | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.coll = db[PACING]
        self.exposure = exposure
        self.inbound = InboundCounter(db)
        self.inbound_days = inbound_days
        self.targets = targets or PacingTargets.from_settings(settings)
        self.state = PacingState(budget=self.targets.budget_max)
        self._read_at = -math.inf
        self._refresh: asyncio.Future[PacingState] | None = None

    def budget(self) -> PacingState | None:
        """The controller's state once it has measured (None: pacing off), from memory;
        starts a background refresh when it is older than the control period (never waits)."""
        if not self.settings.pacing:
            return None
        loop = asyncio.get_running_loop()
        due = loop.time() - self._read_at > self.settings.pacing_control_s
        if due and (self._refresh is None or self._refresh.done()):
            self._read_at = loop.time()
            self._refresh = asyncio.ensure_future(self.refresh())
            self._refresh.add_done_callback(_log_failure)
        return self.state if self.state.impressions is not None else None

    async def settle(self) -> None:
        """Wait for a background refresh still running (its outcome is logged, not raised)."""
        if self._refresh is not None and not self._refresh.done():
            await asyncio.wait([self._refresh])

    async def read(self) -> PacingState:
        with backend_errors("pacing state read failed"):
            doc = await self.coll.find_one({"_id": _DOC_ID})
        self.state = PacingState.from_doc(doc, self.targets.budget_max)
        return self.state

    async def refresh(self, now: datetime | None = None, *, force: bool = False) -> PacingState:
        """Step the controller when the stored state is older than the control period (or
        ``force``), under a lease so one process steps per period; else just re-read it.
        A forced step waits for a step another caller is taking (``force_wait_s``), then
        takes its own; an unforced one leaves the period to that caller."""
        now = now or datetime.now(UTC)
        state = await self.read()
        period = self.settings.pacing_control_s
        # a state dated more than a period ahead of this clock (this host's stepped back, or
        # the stepping host's runs ahead) is stale: read as fresh, no process stepped until
        # this clock caught up (less skew than that: at most one period more between steps)
        stale = age_s(state.updated_at, now, period) >= period
        if not (stale or force):
            return state
        try:
            async with lease(
                self.db[PACING_LOCKS],
                [_DOC_ID],
                lease_s=self.lease_s,
                wait_s=self.force_wait_s if force else 0.0,
                what="pacing",
            ):
                state = await self.read()  # another process may have stepped meanwhile
                fresh = age_s(state.updated_at, now, period) < period
                if fresh and not force:
                    return state
                counts, mean = await self.measure(now)
                # the time since the last step (one period when unknown: a first step, or one
                # dated ahead), at most a day (a controller that did not run for long does not
                # jump)
                since = age_s(state.updated_at, now, period)
                dt = (since if math.isfinite(since) else period) / 86400.0
                state = pacing_step(state, counts, mean, self.targets, now, min(max(dt, 0), 1))
                with backend_errors("pacing state write failed"):
                    await self.coll.replace_one({"_id": _DOC_ID}, state.to_doc(), upsert=True)
        except BackendError as exc:  # busy (another process steps) or a store hiccup
            log.debug("pacing step skipped: %s", exc)
            return await self.read()
        self.state = state
        return state

    async def measure(self, now: datetime) -> tuple[np.ndarray, float]:
        """Inbound attention per member profile (zeros for those without) and the mean
        impressions per member in the current exposure window."""
        members = await self._member_profiles()
        totals = await self.inbound.totals(days=self.inbound_days, now=now)
        n = max(members, len(totals))
        counts = np.zeros(n)
        counts[: len(totals)] = sorted(totals.values())
        impressions = await self._impressions(now)
        return counts, impressions / n if n else 0.0

    async def _member_profiles(self) -> int:
        with backend_errors("member count failed"):
            resp = await self.exposure.client.count(
                index=self.settings.index_alias,
                body={"query": {"term": {"kind": "profile"}}},
            )
        # a failed shard's members are not members the market lacks (nor its impressions)
        return int(whole_search(resp, "member count").get("count", 0))

    async def _impressions(self, now: datetime) -> float:
        start = int(now.timestamp() * 1000) - self.exposure.window_ms
        body = {
            "size": 0,
            "query": {"range": {"window_start": {"gt": start}}},
            "aggs": {"n": {"sum": {"field": "count"}}},
        }
        with backend_errors("exposure sum failed"):
            resp = await self.exposure.client.search(index=self.exposure.index, body=body)
        return float(whole_search(resp, "exposure sum")["aggregations"]["n"]["value"] or 0.0)


def _log_failure(fut: asyncio.Future[Any]) -> None:
    """Retrieve a background refresh's outcome (a failure is logged, never raised)."""
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        log.warning("pacing refresh failed: %r", exc)
