"""A world: a population, a market regime, a pre-period, and runs under an assignment.

:class:`World` first plays a **pre-period** (``warmup_days``) under the control ranker,
starting from what is known before any history (prior popularity, stated preferences). It
leaves the state an experiment starts from: who has seen/liked whom, waiting proposals, and
what the ranker observes afterwards (:class:`~._ranking.Observed`: popularity, exposure and
inbound counts, each viewer's vector learned from the profiles they liked). The pre-period's
outcomes are the covariates for CUPED and its mutual-like graph is what the cluster design
partitions.

:meth:`World.run` then plays ``days`` more days from that state under an
:class:`Assignment` (which viewer is treated on which day, and, for pair-level designs,
which candidates): the treatment applies to a pair when its viewer is treated and, when
candidates are randomised, its candidate too. ``Assignment.everyone``/``nobody`` give the
all-treated and all-control worlds; with the same ``seed`` every world shares its random
numbers, so their difference is the true global treatment effect of that seed.

Two modes: *static* (default) ranks every viewer's pool once per ranker with the real
reranker (features do not move during the run: the bench's thousands of replications); and
*dynamic* (``dynamic=True``) serves every session through :func:`~._ranking.serve` with the
features updated each day from the live market (exposure, inbound, popularity, the viewer's
vector) — what pacing or learning-to-rank experiments need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from opendisco._exceptions import ConfigError

from ._market import Market, Outcomes
from ._population import Population
from ._ranking import (
    Observed,
    PairScores,
    Ranker,
    merge_ranked,
    merged,
    observed_after,
    pair_ranks,
    pair_scores,
    refresh_observed,
    serve,
)
from ._rng import Stream, uniform

__all__ = ["REGIMES", "Assignment", "MarketConfig", "World"]


class MarketConfig(BaseModel):
    """Attention, capacity and time of a simulated market."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: int | None = Field(
        2, ge=1, description="Impressions per session (None: independent exposure, no slots)."
    )
    show_rate: float = Field(2.0, gt=0, description="Independent mode: mean shown per session.")
    independent_depth: int = Field(
        20, ge=1, description="Independent mode: top of each ranking a viewer can be shown."
    )
    capacity: float | None = Field(
        2.0, gt=0, description="Likes a member reviews per active day (None: all of them)."
    )
    expiry_days: int = Field(1, ge=1, description="A waiting like expires after this.")
    instant_matches: bool = Field(True, description="A like to an admirer is mutual at once.")
    seen_days: int | None = Field(
        None,
        ge=1,
        description="A candidate passed on may be shown again this many days later (None: a "
        "pair is shown at most once). Bounds the market's memory, hence the carry-over of a "
        "ranking change.",
    )
    warmup_days: int = Field(7, ge=1, description="Pre-period under the control ranker.")
    days: int = Field(14, ge=1, description="Days of a run after the pre-period.")
    window_days: int = Field(7, ge=1, description="Window of the exposure/inbound features.")
    message_rate: float = Field(0.6, ge=0, le=1, description="P(first message | match).")
    reply_rate: float = Field(0.5, ge=0, le=1, description="P(reply | first message).")


#: From demand- to supply-constrained, plus the no-interference control (no slots, no
#: capacity, no instant matches: every impression's outcome depends on its own pair only).
#: Capacities are reviews per active day, set for the default population's like flow:
#: ``balanced`` binds for the popular members, ``supply_constrained`` for most members,
#: ``demand_constrained`` almost never (bench/README.md gives each regime's expired share).
REGIMES: dict[str, MarketConfig] = {
    "no_interference": MarketConfig(slots=None, capacity=None, instant_matches=False),
    "demand_constrained": MarketConfig(capacity=12.0),
    "balanced": MarketConfig(capacity=2.5),
    "supply_constrained": MarketConfig(capacity=0.8),
}


@dataclass(frozen=True)
class Assignment:
    """Who gets the treatment: ``viewer`` is (n,) or (days, n) bool; ``candidate`` (n,) bool
    or None (the design does not randomise candidates)."""

    viewer: np.ndarray
    candidate: np.ndarray | None = None

    @classmethod
    def everyone(cls, n: int) -> Assignment:
        return cls(np.ones(n, dtype=bool))

    @classmethod
    def nobody(cls, n: int) -> Assignment:
        return cls(np.zeros(n, dtype=bool))

    def viewers_on(self, day: int) -> np.ndarray:
        return self.viewer if self.viewer.ndim == 1 else self.viewer[day]


class World:
    """A population in a market regime after its pre-period (see the module docstring)."""

    def __init__(
        self,
        pop: Population,
        market: MarketConfig | None = None,
        control: Ranker | None = None,
        seed: int = 0,
    ) -> None:
        self.pop = pop
        self.market = market or MarketConfig()
        self.control = control or Ranker()
        self.seed = seed
        self._scores: dict[str, PairScores] = {}
        self._q: dict[str, tuple[np.ndarray, ...]] = {}
        self._decks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._rank_cache: dict[str, np.ndarray] = {}
        state = self._new_market(seed)
        obs = Observed.initial(pop)
        first = pair_scores(pop, obs, self.control)
        cursors: dict[int, np.ndarray] = {}
        for day in range(self.market.warmup_days):
            if self.market.slots is None:
                self._play_independent(state, day, self._exposure(first, first, "_warmup"), None)
            else:
                self._play_static(state, day, [(first.order, first.ptr)], None, None, cursors)
        self.pre: Outcomes = state.outcomes()
        self.observed = observed_after(pop, obs, self.pre)
        self._state = state

    @property
    def first_day(self) -> int:
        return self.market.warmup_days

    def _new_market(self, seed: int) -> Market:
        m = self.market
        return Market(
            self.pop, seed, m.capacity, m.expiry_days, m.instant_matches, m.message_rate,
            m.reply_rate, m.seen_days,
        )  # fmt: skip

    def scores(self, ranker: Ranker) -> PairScores:
        """Every viewer's pool ranked by ``ranker`` on the post-pre-period features (cached
        by ``ranker.name``: one name, one ranker per world)."""
        if ranker.name not in self._scores:
            self._scores[ranker.name] = pair_scores(self.pop, self.observed, ranker)
        return self._scores[ranker.name]

    # -- runs --------------------------------------------------------------------------------
    def run(
        self,
        treatment: Ranker,
        assignment: Assignment,
        seed: int,
        *,
        dynamic: bool = False,
        before_day: Callable[[int, Observed], None] | None = None,
    ) -> Outcomes:
        """``days`` days from the pre-period's end state; ``seed`` keys every random number
        (same seed = same draws in every world)."""
        state = self._state.copy()
        state.seed = seed
        state.start_log(self.first_day)
        days = range(self.first_day, self.first_day + self.market.days)
        if dynamic:
            if self.market.slots is None:
                raise ConfigError("dynamic runs serve sessions: the market needs slots")
            obs = self.observed.copy()
            liked_content = self.observed.user_vector.copy()
            for day in days:
                if before_day is not None:
                    before_day(day, obs)
                self._play_dynamic(state, day, treatment, assignment, obs)
                shown, liked = state.last_day()
                refresh_observed(
                    self.pop, obs, shown, liked, self.market.window_days, liked_content
                )
            return state.outcomes()
        if self.market.slots is None:
            exp = self._exposure(self.scores(self.control), self.scores(treatment), treatment.name)
            for day in days:
                self._play_independent(state, day, exp, assignment)
            return state.outcomes()
        sources, which = self._sources(treatment, assignment)
        cursors: dict[int, np.ndarray] = {}
        for i, day in enumerate(days):
            today = which if which is None or which.ndim == 1 else which[i]
            self._play_static(state, day, sources, today, assignment, cursors)
        return state.outcomes()

    def _deck(self, ranker: Ranker) -> tuple[np.ndarray, np.ndarray]:
        """The ranker's order without the pairs seen in the pre-period (cached)."""
        key = f"deck:{ranker.name}"
        if key not in self._decks:
            s = self.scores(ranker)
            self._decks[key] = self._unseen(s.order, s.ptr)
        return self._decks[key]

    def _unseen(self, order: np.ndarray, ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.market.seen_days is not None:  # passes come back: only likes never do
            keep = ~self._state.liked[order]
        else:
            keep = ~self._state.seen[order]
        viewer = np.repeat(np.arange(self.pop.n), np.diff(ptr))
        counts = np.bincount(viewer[keep], minlength=self.pop.n)
        return order[keep], np.concatenate([[0], np.cumsum(counts)])

    def _sources(
        self, treatment: Ranker, a: Assignment
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
        """The ranked decks a run serves from and which one each viewer uses (per day)."""
        if not a.viewer.any() or treatment.name == self.control.name:
            return [self._deck(self.control)], None
        if a.candidate is None:
            return [self._deck(self.control), self._deck(treatment)], a.viewer.astype(np.int64)
        if a.viewer.ndim != 1:
            raise ConfigError("pair-level designs keep a viewer's arm for the whole run")
        pop = self.pop
        mask = a.viewer[pop.pair_viewer] & a.candidate[pop.pair_candidate]
        m = self.market
        depth = 2 * (m.slots or 0) * (m.warmup_days + m.days) + 8  # deeper than a run serves
        ranks = [self._ranks(r) for r in (self.control, treatment)]
        return [self._unseen(*merge_ranked(pop, *ranks, mask, self.seed, depth))], None

    def _ranks(self, ranker: Ranker) -> np.ndarray:
        """Each pair's position in ``ranker``'s order (cached like :meth:`scores`)."""
        if ranker.name not in self._rank_cache:
            self._rank_cache[ranker.name] = pair_ranks(self.pop, self.scores(ranker))
        return self._rank_cache[ranker.name]

    def _play_static(
        self,
        state: Market,
        day: int,
        sources: list[tuple[np.ndarray, np.ndarray]],
        which: np.ndarray | None,
        a: Assignment | None,
        cursors: dict[int, np.ndarray],
    ) -> None:
        pop = self.pop
        active = state.active_today(day)
        back = state.forget(day)
        shown_parts = []
        for s, (order, ptr) in enumerate(sources):
            viewers = np.flatnonzero(active if which is None else active & (which == s))
            cur = cursors.setdefault(s, np.zeros(pop.n, dtype=np.int64))
            cur[back] = 0
            shown_parts.append(_take(order, ptr, cur, viewers, self.market.slots or 0, state.seen))
        shown = np.concatenate(shown_parts) if shown_parts else np.zeros(0, np.int64)
        state.day(day, active, shown, _treated(pop, a, day - self.first_day, shown))

    def _exposure(
        self, control: PairScores, treated: PairScores, key: str
    ) -> tuple[np.ndarray, ...]:
        """Independent mode: the pairs a viewer can be shown — the top ``depth`` of either
        ranking (what retrieval hands the ranker) — and their show probability per session
        under each arm: σ((score − θ_v)/τ_v) of the pair's *own* score, θ_v and τ_v set on
        the control's scores so a viewer sees ``show_rate`` per session."""
        if key in self._q:
            return self._q[key]
        pop, depth = self.pop, self.market.independent_depth
        rank_c, rank_t = pair_ranks(pop, control), pair_ranks(pop, treated)
        pairs = np.flatnonzero((rank_c < depth) | (rank_t < depth))
        pv = pop.pair_viewer[pairs]
        sc, st = control.score[pairs], treated.score[pairs]
        ok = np.isfinite(sc)
        n = pop.n
        cnt = np.maximum(np.bincount(pv[ok], minlength=n), 1)
        mean = np.bincount(pv[ok], sc[ok], minlength=n) / cnt
        var = np.bincount(pv[ok], (sc[ok] - mean[pv[ok]]) ** 2, minlength=n) / cnt
        tau = np.maximum(np.sqrt(var), 1e-6)
        target = np.minimum(self.market.show_rate, cnt * 0.999)
        lo, hi = mean - 20 * tau, mean + 20 * tau
        zc = np.where(ok, sc, 0.0)
        for _ in range(50):
            mid = (lo + hi) / 2
            q = np.where(ok, 1 / (1 + np.exp(-(zc - mid[pv]) / tau[pv])), 0.0)
            high = np.bincount(pv, q, minlength=n) > target
            lo, hi = np.where(high, mid, lo), np.where(high, hi, mid)
        theta = ((lo + hi) / 2)[pv]

        def prob(s: np.ndarray) -> np.ndarray:
            fin = np.isfinite(s)
            return np.where(fin, 1 / (1 + np.exp(-(np.where(fin, s, 0.0) - theta) / tau[pv])), 0.0)

        self._q[key] = (pairs, prob(sc), prob(st))
        return self._q[key]

    def _play_independent(
        self,
        state: Market,
        day: int,
        exposure: tuple[np.ndarray, ...],
        a: Assignment | None,
    ) -> None:
        pop = self.pop
        pairs, qc, qt = exposure
        active = state.active_today(day)
        sel = active[pop.pair_viewer[pairs]]
        pairs, qc, qt = pairs[sel], qc[sel], qt[sel]
        treated = _treated(pop, a, day - self.first_day, pairs)
        q = np.where(treated, qt, qc)
        shown = uniform(state.seed, Stream.SHOW, pairs, day) < q
        state.day(day, active, pairs[shown], treated[shown])

    def _play_dynamic(
        self, state: Market, day: int, treatment: Ranker, a: Assignment, obs: Observed
    ) -> None:
        pop = self.pop
        active = state.active_today(day)
        state.forget(day)
        treated_viewers = a.viewers_on(day - self.first_day)
        k = self.market.slots or 0
        shown_parts = []
        for v in np.flatnonzero(active).tolist():
            lo, hi = int(pop.ptr[v]), int(pop.ptr[v + 1])
            pairs = lo + np.flatnonzero(~state.seen[lo:hi])
            if not pairs.size:
                continue
            cands = pop.pair_candidate[pairs]
            if treated_viewers[v] and a.candidate is not None:
                rows = merged(pop, obs, v, cands, self.control, treatment, a.candidate[cands], k)
            else:
                arm = treatment if treated_viewers[v] else self.control
                rows = serve(pop, obs, v, cands, arm, k=k).order
            shown_parts.append(pairs[rows[:k]])
        shown = np.concatenate(shown_parts) if shown_parts else np.zeros(0, np.int64)
        state.day(day, active, shown, _treated(pop, a, day - self.first_day, shown))


def _treated(pop: Population, a: Assignment | None, d: int, pairs: np.ndarray) -> np.ndarray:
    if a is None:
        return np.zeros(pairs.shape[0], dtype=bool)
    out = a.viewers_on(d)[pop.pair_viewer[pairs]]
    if a.candidate is not None:
        out = out & a.candidate[pop.pair_candidate[pairs]]
    return out


def _take(
    order: np.ndarray,
    ptr: np.ndarray,
    cursor: np.ndarray,
    viewers: np.ndarray,
    k: int,
    seen: np.ndarray,
) -> np.ndarray:
    """For each viewer, the first ``k`` unseen pairs of its block of ``order`` at or after
    its cursor; advances the cursors (pairs behind a cursor are all seen)."""
    out = []
    need = np.full(viewers.shape[0], k)
    width = max(k, 1)
    while viewers.size:
        base = ptr[viewers] + cursor[viewers]
        end = ptr[viewers + 1]
        pos = base[:, None] + np.arange(width)[None, :]
        valid = pos < end[:, None]
        pairs = order[np.minimum(pos, max(order.shape[0] - 1, 0))] if order.size else pos
        ok = valid & ~seen[pairs] if order.size else valid & False
        take = ok & (np.cumsum(ok, axis=1) <= need[:, None])
        out.append(pairs[take])
        got = take.sum(axis=1)
        done = got >= need
        last = width - 1 - np.argmax(take[:, ::-1], axis=1)
        scanned = valid.sum(axis=1)
        cursor[viewers] += np.where(done, last + 1, scanned)
        exhausted = scanned < width
        more = ~done & ~exhausted
        viewers, need = viewers[more], (need - got)[more]
        width *= 2
    return np.concatenate(out) if out else np.zeros(0, np.int64)
