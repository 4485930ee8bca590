"""Marketplace health in the simulator: the two-sided ranker against the one-sided linear one.

    $(./dev env)/bin/python bench/marketplace.py [--quick] [--markets N] [--seeds 1,2,3,4,5]
        [--validation 101,102,103] [--no-tune] [--write]

The population and the market step are ``opendisco.experiments.sim`` (latent two-sided
preferences, two-sided eligibility, finite attention — ``slots`` impressions per session — and
finite reply capacity, in the ``balanced`` regime). Every session is served through the real
:class:`~opendisco.rerank.Reranker`, one viewer after another in a random order through each
simulated day, with the features the served pipeline computes, updated as the market moves:

* both arms: profile embedding (content), the viewer's vector learned from the profiles they
  liked (stated preferences before any like), quality, popularity (prior + likes received),
  exposure = impressions received *today so far* (the exposure counters' 24-h window, served
  impressions counted) and the paced exposure (impressions decayed with a one-day time
  constant, the counters' leaky bucket), inbound = likes received (7-day decayed) — i.e. the
  linear scorer with every named step of today's defaults;
* **one-sided** (the baseline): candidates are not flagged as members, so the ``reciprocal``
  and ``pacing`` steps are inert — the ranker as it was before issue 17;
* **two-sided**: candidates are members (``CandidateBatch.member``) with the candidate's own
  history — their learned taste, likes and passes given, whether they already liked the viewer
  — and the viewer's profile, so ``reciprocal`` combines both directions (weighted harmonic
  mean); ``pacing`` demotes members ahead of their paced daily budget, the budget set by the
  feedback controller (``opendisco.signals.pacing_step``, stepped once per simulated day on the
  7-day inbound attention) toward a ceiling on the top-1% inbound share.

A run: a 7-day pre-period under the one-sided ranker (shared), then 14 days per arm from that
state with common random numbers (the same seed gives both arms the same draws). Reported per
arm: mutual likes per 1,000 impressions, share of members with ≥ 1 match per simulated week,
Gini and top-1% share of inbound attention (likes received during the 14 days). Ratios and
differences are per seed (paired), quoted as mean ± standard error over the test seeds.

Tuning (``--no-tune`` skips it): the controller's ceiling is half the one-sided top-1% share
measured on the **validation** seeds (the issue's target, as an operator would set it from
their own baseline), and ``reciprocal_weight`` × ``inbound_capacity`` (the inbound likes a
member gets to per window: the market's reply capacity, which the reciprocal estimate's reply
chance and the exposure step's overload damp read) are picked on those seeds from a small
grid (the most targets met, the Gini counted as no higher only when it is so on every
validation seed, then the largest mutual-likes ratio), with ``reply_capacity`` (the
congestion-aware reply chance, from the live like count each member receives, decayed with a
one-day half-life like the served ``trend`` counters) among the knobs; the test seeds run
only the picked point, on the default population (10 markets of 150) and on larger markets
(3 of 500: viewers' eligible pools of ~100 instead of ~35, which a 3-week run does not
exhaust). ``--jobs N`` runs the seeds in N processes (the same figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opendisco.experiments import sim
from opendisco.rerank import (
    DEFAULT_STEPS,
    CandidateBatch,
    Features,
    RerankConfig,
    RerankContext,
    Reranker,
    merged_config,
)
from opendisco.signals import PacingState, PacingTargets, pacing_step, rate_per_day

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "marketplace.json"
VALIDATION = HERE / "results" / "marketplace-validation.json"
SESSION_ORDER = 8  # a sim random stream of its own: the order viewers arrive in each day
TREND_HALF_LIFE_DAYS = 1.0  # the live like count's half-life (trending_half_life_hours = 24)


@dataclass
class Arm:
    name: str
    config: RerankConfig
    two_sided: bool
    targets: PacingTargets | None = None


@dataclass
class Live:
    """What the ranker observes, updated as the market moves."""

    popularity: np.ndarray
    inbound: np.ndarray  # likes received, 7-day decayed
    exposure: np.ndarray  # impressions received today so far
    acc: np.ndarray  # sum of liked profiles (+ stated preferences): the viewer's vector
    likes_sent: np.ndarray
    passes_sent: np.ndarray
    paced: np.ndarray  # impressions decayed with a one-day time constant (the leaky bucket)
    paced_at: np.ndarray  # when each member's ``paced`` was last brought up to date (days)
    trend: np.ndarray  # likes received, decayed with a one-day half-life (the live count)
    trend_at: float = 0.0  # when ``trend`` was last brought up to date (days)
    pacing: PacingState | None = None
    budgets: list[float] = field(default_factory=list)
    controllers: dict[str, PacingState] = field(default_factory=dict)  # pre-period, per arm

    @classmethod
    def initial(cls, pop: sim.Population) -> Live:
        n = pop.n
        return cls(
            pop.prior.astype(float).copy(),
            np.zeros(n),
            np.zeros(n),
            pop.stated.copy(),
            np.zeros(n),
            np.zeros(n),
            np.zeros(n),
            np.zeros(n),
            np.zeros(n),
        )

    def copy(self) -> Live:
        return Live(
            self.popularity.copy(), self.inbound.copy(), self.exposure.copy(), self.acc.copy(),
            self.likes_sent.copy(), self.passes_sent.copy(), self.paced.copy(),
            self.paced_at.copy(), self.trend.copy(), self.trend_at, self.pacing,
            list(self.budgets), dict(self.controllers),
        )  # fmt: skip

    def paced_now(self, members: np.ndarray, t: float) -> np.ndarray:
        return self.paced[members] * np.exp(-(t - self.paced_at[members]))

    def like_rate(self, members: np.ndarray, t: float) -> np.ndarray:
        """Likes reaching each member per day now, from the live decayed count (what the
        served pipeline reads from the exposure counters' ``trend``)."""
        now = self.trend[members] * 2.0 ** (-(t - self.trend_at))
        return rate_per_day(now, TREND_HALF_LIFE_DAYS * 24.0)

    def liked_at(self, likes: np.ndarray, t: float) -> None:
        self.trend = self.trend * 2.0 ** (-(t - self.trend_at)) + likes
        self.trend_at = t

    def shown(self, members: np.ndarray, t: float) -> None:
        self.paced[members] = self.paced_now(members, t) + 1.0
        self.paced_at[members] = t

    def user_vector(self, v: int) -> np.ndarray:
        a = self.acc[v]
        n = float(np.linalg.norm(a))
        return a / n if n > 0 else a


def _categories(pop: sim.Population) -> list[str]:
    return [f"type{t}" for t in range(pop.config.types)]


def serve(
    pop: sim.Population,
    market: sim.Market,
    live: Live,
    arm: Arm,
    reranker: Reranker,
    v: int,
    pairs: np.ndarray,
    k: int,
    t: float,
) -> np.ndarray:
    """One session: the pairs of ``v`` shown (best ``k`` of its unseen pool)."""
    cand = pop.pair_candidate[pairs]
    n = cand.shape[0]
    batch = CandidateBatch(
        ids=[pop.ids[j] for j in cand.tolist()],
        fused=np.ones(n),
        source_names=["market"],
        source_scores=np.ones((n, 1)),
        category=pop.kind[cand],
        categories=_categories(pop),
        owner=np.arange(n, dtype=np.int64),
        owners=[pop.ids[j] for j in cand.tolist()],
        quality=pop.quality[cand],
        popularity=live.popularity[cand],
        age_days=pop.age_days[cand],
        available=np.ones(n, dtype=bool),
        member=np.ones(n, dtype=bool) if arm.two_sided else None,
    )
    feats = Features(
        content=pop.content[cand],
        behaviour=np.zeros((n, 1)),
        exposure=live.exposure[cand],
        inbound=live.inbound[cand],
        graph=np.zeros(n),
    )
    ctx = RerankContext(user_vector=live.user_vector(v), k=k)
    if arm.two_sided:
        norms = np.linalg.norm(live.acc[cand], axis=1, keepdims=True)
        feats = Features(
            **{
                **feats.__dict__,
                "taste": live.acc[cand] / np.where(norms > 0, norms, 1.0),
                "likes_sent": live.likes_sent[cand],
                "passes_sent": live.passes_sent[cand],
                "liked_viewer": market.liked[pop.reverse[pairs]].astype(float),
                "paced_exposure": live.paced_now(cand, t),
                "like_rate": live.like_rate(cand, t),
            }
        )
        pacing = live.pacing
        ctx = RerankContext(
            user_vector=ctx.user_vector,
            k=k,
            viewer_profile=pop.content[v],
            pacing_budget=pacing.impressions if pacing is not None else None,
            pacing_mean_inbound=pacing.mean_inbound if pacing is not None else None,
        )
    return pairs[reranker.run(batch, feats, ctx).order[:k]]


def play(
    pop: sim.Population,
    market: sim.Market,
    live: Live,
    arm: Arm,
    days: range,
    slots: int,
    window: int = 7,
    controllers: Sequence[Arm] = (),
) -> None:
    """Serve every session of ``days`` in a random order through each day, advancing the
    market and what the ranker observes."""
    reranker = Reranker(arm.config)
    decay = 1.0 - 1.0 / window
    for day in days:
        active = market.active_today(day)
        viewers = np.flatnonzero(active)
        viewers = viewers[np.argsort(sim.uniform(market.seed, SESSION_ORDER, viewers, day))]
        live.exposure[:] = 0.0
        shown_parts = []
        for i, v in enumerate(viewers.tolist()):
            lo, hi = int(pop.ptr[v]), int(pop.ptr[v + 1])
            pairs = lo + np.flatnonzero(~market.seen[lo:hi])
            if not pairs.size:
                continue
            # sessions arrive spread through the day: the i-th of N at day + i/N
            t = day + i / max(len(viewers), 1)
            top = serve(pop, market, live, arm, reranker, v, pairs, slots, t)
            shown_parts.append(top)
            live.exposure[pop.pair_candidate[top]] += 1.0
            live.shown(pop.pair_candidate[top], t)
        shown = np.concatenate(shown_parts) if shown_parts else np.zeros(0, np.int64)
        market.day(day, active, shown, np.zeros(shown.shape[0], dtype=bool))
        shown, liked = market.last_day()
        live.inbound *= decay
        np.add.at(live.inbound, pop.pair_candidate[liked], 1.0)
        np.add.at(live.popularity, pop.pair_candidate[liked], 1.0)
        live.liked_at(np.bincount(pop.pair_candidate[liked], minlength=pop.n), day + 1.0)
        np.add.at(live.acc, pop.pair_viewer[liked], pop.content[pop.pair_candidate[liked]])
        seen_by = np.bincount(pop.pair_viewer[market.seen], minlength=pop.n)
        live.likes_sent = np.bincount(pop.pair_viewer[market.liked], minlength=pop.n).astype(float)
        liked_seen = np.bincount(pop.pair_viewer[market.liked & market.seen], minlength=pop.n)
        live.passes_sent = np.maximum(seen_by - liked_seen, 0).astype(float)
        mean_exposure = shown.shape[0] / pop.n
        if arm.targets is not None:
            state = live.pacing or PacingState(budget=arm.targets.budget_max)
            live.pacing = pacing_step(state, live.inbound, mean_exposure, arm.targets)
            live.budgets.append(live.pacing.budget)
        for other in controllers:
            if other.targets is not None:
                state = live.controllers.get(other.name) or PacingState(other.targets.budget_max)
                live.controllers[other.name] = pacing_step(
                    state, live.inbound, mean_exposure, other.targets
                )


def one_run(
    pop: sim.Population, seed: int, arms: list[Arm], regime: sim.MarketConfig
) -> dict[str, dict[str, Any]]:
    """Pre-period under the first arm, then every arm for ``regime.days`` from that state."""
    mc = regime
    market = sim.Market(
        pop, seed, mc.capacity, mc.expiry_days, mc.instant_matches, mc.message_rate,
        mc.reply_rate,
    )  # fmt: skip
    live = Live.initial(pop)
    slots = mc.slots or 2
    # the pre-period runs under the first arm; the controllers of the others measure it too
    # (in production the controller has been running long before an experiment starts)
    play(pop, market, live, arms[0], range(mc.warmup_days), slots, controllers=arms[1:])
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        m = market.copy()
        m.seed = seed
        m.start_log(mc.warmup_days)
        lv = live.copy()
        lv.pacing = live.controllers.get(arm.name)
        t0 = time.perf_counter()
        play(pop, m, lv, arm, range(mc.warmup_days, mc.warmup_days + mc.days), slots)
        res = sim.summary(m.outcomes(), pop)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        if lv.budgets:
            res["pacing_budget_last"] = round(lv.budgets[-1], 3)
        out[arm.name] = res
    return out


def seed_run(
    pc: sim.PopulationConfig, seed: int, arms: list[Arm], regime: sim.MarketConfig
) -> dict[str, dict[str, Any]]:
    """One seed's population and paired run (a process pool's unit of work)."""
    return one_run(sim.generate_population(pc, seed=seed), seed, arms, regime)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return m, se


def compare(runs: list[dict[str, dict[str, Any]]], base: str, arm: str) -> dict[str, Any]:
    """Paired per-seed ratios/differences of ``arm`` vs ``base``: mean ± SE."""
    keys = {
        "mutual_likes_per_1000": "ratio",
        "match_share_per_week": "ratio",
        "inbound_gini": "diff",
        "inbound_top1_share": "ratio",
    }
    out: dict[str, Any] = {}
    for k, how in keys.items():
        per = [
            (r[arm][k] / r[base][k]) if how == "ratio" else (r[arm][k] - r[base][k]) for r in runs
        ]
        m, se = _mean_se(per)
        out[f"{k}_{how}"] = {"mean": round(m, 4), "se": round(se, 4), "per_seed": per}
        for name in (base, arm):
            mm, ss = _mean_se([r[name][k] for r in runs])
            out.setdefault(name, {})[k] = {"mean": round(mm, 4), "se": round(ss, 4)}
    return out


def meets(c: dict[str, Any]) -> dict[str, bool]:
    return {
        "mutual_likes_x1.3": c["mutual_likes_per_1000_ratio"]["mean"] >= 1.3,
        "gini_not_higher": c["inbound_gini_diff"]["mean"] <= 0.0,
        "top1_at_most_half": c["inbound_top1_share_ratio"]["mean"] <= 0.5,
        "match_share_up_20pct": c["match_share_per_week_ratio"]["mean"] >= 1.2,
    }


#: the validation grid: the previous pick (reciprocal + soft pacing), then the same with the
#: budget enforced below the page cut at three controller floors, the first-impression boost,
#: and the weighted geometric mean
_BASE = {"reciprocal_weight": 0.85, "inbound_capacity": 5.0}
GRID: list[dict[str, Any]] = [
    _BASE,
    {**_BASE, "pacing_cut": 1.0, "budget_min": 4.0},
    {**_BASE, "pacing_cut": 1.0, "budget_min": 2.0},
    {**_BASE, "pacing_cut": 1.0, "budget_min": 1.0},
    {**_BASE, "pacing_cut": 1.0, "budget_min": 2.0, "pacing_boost": 0.3},
    {**_BASE, "reciprocal_mode": "product", "reciprocal_weight": 0.6},
    {**_BASE, "reciprocal_mode": "product", "reciprocal_weight": 0.6, "pacing_cut": 1.0,
     "budget_min": 2.0},
]  # fmt: skip


def validation_meets(t: dict[str, Any]) -> dict[str, bool]:
    """The targets a validation row meets, "at equal or lower Gini" read per seed: the Gini
    is no higher on **every** validation seed (a mean of two seeds at −0.003 was +0.006 on
    one seed, and its test run on the larger market came out +0.032)."""
    out = dict(t["meets"])
    out["gini_not_higher"] = max(t["compare"]["inbound_gini_diff"]["per_seed"]) <= 0.0
    return out


def pick_point(tuning: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid point meeting the most of the issue's targets on validation
    (:func:`validation_meets`), ties broken by the larger mutual-likes ratio."""
    best = max(
        tuning,
        key=lambda t: (
            sum(validation_meets(t).values()),
            t["compare"]["mutual_likes_per_1000_ratio"]["mean"],
        ),
    )
    return dict(best["point"])


#: the controller's knobs the grid may set (the rest of a point overrides ``RerankConfig``)
TARGET_KEYS = ("budget_min", "kp")


def arms_for(point: dict[str, Any], top1: float) -> list[Arm]:
    """The one-sided baseline (today's default steps and weights, members not flagged) and
    the two-sided ranker: ``point`` overrides the reranker's config (``reciprocal_weight``,
    ``reciprocal_mode``, ``inbound_capacity`` — the inbound likes a member gets to per
    window, which the reciprocal estimate's reply chance and the exposure step's overload
    damp read — ``pacing_cut``, ``pacing_boost``, ...) and the controller's ``budget_min`` /
    ``kp``; the controller steers toward the ceiling ``top1`` on the top-1% inbound share."""
    one_sided_steps = tuple(s for s in DEFAULT_STEPS if s not in ("reciprocal", "pacing"))
    base = Arm("one-sided", RerankConfig(steps=one_sided_steps), two_sided=False)
    rerank = {k: v for k, v in point.items() if k not in TARGET_KEYS}
    two = Arm(
        "two-sided",
        merged_config(rerank),
        two_sided=True,
        targets=PacingTargets(
            top1_share=top1,
            gini=None,
            budget_min=point.get("budget_min", 0.5),
            budget_max=8.0,
            kp=point.get("kp", 0.0),
        ),
    )
    return [base, two]


def _fmt(c: dict[str, Any], key: str) -> str:
    v = c[key]
    return f"{v['mean']:.3f} ± {v['se']:.3f}"


TARGETS = (
    # (meets() key, the wording, the compared figure, its prefix)
    ("mutual_likes_x1.3", "mutual likes / 1,000 impr. ≥ 1.3×", "mutual_likes_per_1000_ratio", "×"),
    ("gini_not_higher", "inbound Gini not higher", "inbound_gini_diff", ""),
    ("top1_at_most_half", "top-1% inbound share ≤ 0.5×", "inbound_top1_share_ratio", "×"),
    ("match_share_up_20pct", "members matched / week ≥ 1.2×", "match_share_per_week_ratio", "×"),
)  # fmt: skip


def _budget_floor_note(r: dict[str, Any]) -> str:
    """How often the controller ended the test runs at its floor (pacing as strong as allowed)."""
    floor = r["picked"].get("budget_min", 0.5)
    parts = []
    for name, block in r["populations"].items():
        last = [run["two-sided"].get("pacing_budget_last") for run in block["runs"]]
        at = sum(1 for b in last if b is not None and b <= floor + 1e-9)
        parts.append(f"{at} of {len(last)} test runs on {name}")
    return ", ".join(parts)


def _point(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def readme_section(r: dict[str, Any]) -> str:
    """The ``marketplace`` section of bench/README.md from a result."""
    lines = [
        "<!-- marketplace -->",
        "## marketplace",
        "",
        "`python bench/marketplace.py --write` (or `--stage validation --write`, then",
        "`--stage test --write`; `--readme-only` rewrites this section from",
        "`bench/results/marketplace.json`): issue 17's marketplace health in the simulator",
        "(`opendisco.experiments.sim`, regime `{}`), every session served through the real".format(
            r["regime"]
        ),
        "reranker with the pipeline's features: the two-sided ranker (reciprocal + pacing steps,",
        "candidates flagged as members) against the **one-sided linear ranker** (today's default",
        "steps and weights, members not flagged). 7-day pre-period under the one-sided ranker,",
        "then 14 days per arm from that state with common random numbers. Each cell: one-sided",
        "→ two-sided (mean over the test seeds), then the **paired** per-seed ratio (×) or",
        "difference ± its standard error over the test seeds. The figures are statistics of",
        "seeded runs (no timing): identical on any machine and load.",
        "",
        f"Parameters were picked on **validation seeds {r['validation_seeds']}** only, on",
        f"{r['population']} (test seeds below are distinct): the grid point meeting the most",
        "targets, the Gini counted as not higher only when it is no higher on **every**",
        "validation seed (per-seed differences in the grid), ties broken by the larger",
        "mutual-likes ratio. `reply_capacity` (likes a member answers per day) makes the",
        "reciprocal estimate congestion-aware: × P(the candidate still has reply capacity) from",
        "the live like rate (`rerank._market.reply_chance`). The controller's ceiling on the",
        "top-1% inbound share is half the one-sided share measured on the validation seeds of",
        f"each population (on {r['population']}: {r['ceiling_top1_share']}, half of",
        f"{r['validation_one_sided_top1_share']}). Validation grid (paired means over the",
        "validation seeds; Gini per seed in brackets):",
        "",
        "| point | mutual likes / 1,000 | matched / week | Gini (diff.) | top-1% share |",
        "|---|---|---|---|---|",
    ]
    for t in r["tuning"]:
        c = t["compare"]
        lines.append(
            f"| {_point(t['point'])} | ×{c['mutual_likes_per_1000_ratio']['mean']:.3f} "
            f"| ×{c['match_share_per_week_ratio']['mean']:.3f} "
            f"| {c['inbound_gini_diff']['mean']:+.3f} "
            f"({', '.join(f'{x:+.3f}' for x in c['inbound_gini_diff']['per_seed'])}) "
            f"| ×{c['inbound_top1_share_ratio']['mean']:.3f} |"
        )
    lines += [
        "",
        f"Picked: {_point(r['picked'])}. Load before/after: {r['load']['before']} /",
        f"{r['load']['after']}; {r['seconds']:.0f} s (test stage).",
        "",
        "| population (markets × members) | test seeds | mutual likes / 1,000 impr. | share of"
        " members with ≥ 1 match / week | inbound Gini (diff.) | top-1% share of inbound"
        " attention |",
        "|---|---|---|---|---|---|",
    ]
    for name, block in r["populations"].items():
        c = block["compare"]
        base, two = c["one-sided"], c["two-sided"]

        def pair(k: str, base: dict[str, Any] = base, two: dict[str, Any] = two) -> str:
            return f"{base[k]['mean']:.4g} → {two[k]['mean']:.4g}"

        lines.append(
            f"| {name} | {block['test_seeds']} "
            f"| {pair('mutual_likes_per_1000')} (×{_fmt(c, 'mutual_likes_per_1000_ratio')}) "
            f"| {pair('match_share_per_week')} (×{_fmt(c, 'match_share_per_week_ratio')}) "
            f"| {pair('inbound_gini')} ({_fmt(c, 'inbound_gini_diff')}) "
            f"| {pair('inbound_top1_share')} (×{_fmt(c, 'inbound_top1_share_ratio')}) |"
        )
    lines += ["", "Issue 17's targets on the test seeds:", ""]
    for name, block in r["populations"].items():
        c, ok = block["compare"], meets(block["compare"])
        cells = [
            f"{label}: {prefix}{_fmt(c, key)} {'met' if ok[k] else '**missed**'}"
            for k, label, key, prefix in TARGETS
        ]
        lines.append(f"* {name}: " + "; ".join(cells) + ".")
    lines += [
        "",
        f"The controller ended at its floor in {_budget_floor_note(r)}. The diagnosis (where",
        "the matches are lost, the estimate's accuracy, the trade-off the grid shows) is in",
        "the next section.",
        "",
        "Full figures (per seed, the validation grid) in `bench/results/marketplace.json`.",
        "<!-- /marketplace -->",
    ]
    return "\n".join(lines) + "\n"


def write_readme(section: str) -> None:
    path = HERE / "README.md"
    text = path.read_text()
    start, end = "<!-- marketplace -->", "<!-- /marketplace -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 markets, 2+2 seeds, no grid")
    ap.add_argument("--markets", type=int, default=10)
    ap.add_argument("--market-size", type=int, default=150)
    ap.add_argument(
        "--large",
        default="3x500",
        help="a second population (markets x size), run with the picked point only; '' skips it",
    )
    ap.add_argument("--seeds", default="1,2,3,4,5", help="test seeds (reported)")
    ap.add_argument("--validation", default="101,102", help="seeds tuning picks on")
    ap.add_argument("--regime", default="balanced", choices=sorted(sim.REGIMES))
    ap.add_argument("--no-tune", action="store_true")
    ap.add_argument(
        "--stage",
        default="all",
        choices=("all", "validation", "test"),
        help="validation: the grid only (written with --write); test: the test seeds with the "
        "point picked in bench/results/marketplace-validation.json",
    )
    ap.add_argument(
        "--points",
        default="",
        help="validation: run only these grid points (a JSON list) and add them to the stored "
        "grid of bench/results/marketplace-validation.json (same validation seeds), then pick",
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="seeds run in parallel processes (same figures)"
    )
    ap.add_argument("--write", action="store_true", help="write results and bench/README.md")
    ap.add_argument(
        "--readme-only",
        action="store_true",
        help="rewrite bench/README.md's section from bench/results/marketplace.json (no run)",
    )
    args = ap.parse_args()
    if args.readme_only:
        write_readme(readme_section(json.loads(RESULTS.read_text())))
        return
    quick = args.quick
    test = [int(s) for s in args.seeds.split(",")][: 2 if quick else None]
    val = [int(s) for s in args.validation.split(",")][: 2 if quick else None]
    regime = sim.REGIMES[args.regime]
    cfg = sim.PopulationConfig(markets=4 if quick else args.markets, market_size=args.market_size)
    load0 = os.getloadavg()
    t0 = time.perf_counter()

    def runs_for(
        seeds: list[int], arms: list[Arm], pc: sim.PopulationConfig = cfg
    ) -> list[dict[str, dict[str, Any]]]:
        jobs = [(pc, s, arms, regime) for s in seeds]
        if args.jobs > 1 and len(seeds) > 1:
            with ProcessPoolExecutor(min(args.jobs, len(seeds))) as pool:
                out = list(pool.map(seed_run, *zip(*jobs, strict=True)))
        else:
            out = [seed_run(*job) for job in jobs]
        for s, res in zip(seeds, out, strict=True):
            brief = {
                a: {k: round(v, 4) for k, v in r.items() if k in SHOWN} for a, r in res.items()
            }
            print(f"  seed {s}: {json.dumps(brief)}", file=sys.stderr, flush=True)
        return out

    def ceiling_for(pc: sim.PopulationConfig) -> tuple[float, float]:
        """Half the one-sided top-1% inbound share on the validation seeds of ``pc`` (the
        issue's target, as an operator would set it from their own baseline)."""
        base_only = runs_for(val, arms_for({}, 0.05)[:1], pc)
        top1 = statistics.fmean(r["one-sided"]["inbound_top1_share"] for r in base_only)
        return round(0.5 * top1, 4), round(top1, 4)

    pops = {f"{cfg.markets}x{cfg.market_size}": cfg}
    if args.large and not quick:
        m, size = (int(x) for x in args.large.split("x"))
        pops[args.large] = sim.PopulationConfig(markets=m, market_size=size)
    if args.stage in ("all", "validation"):
        grid = GRID[:1] if (args.no_tune or quick) else GRID
        tuning = []
        if args.points:
            # only these points; the other rows (and the ceiling) come from the stored
            # validation run on the same seeds
            grid = json.loads(args.points)
            stored = json.loads(VALIDATION.read_text())
            if stored["validation_seeds"] != val:
                raise SystemExit("--points: the stored grid ran on other validation seeds")
            tuning = [t for t in stored["tuning"] if t["point"] not in grid]
            ceiling, top1_base = (
                stored["ceiling_top1_share"],
                stored["validation_one_sided_top1_share"],
            )
        else:
            print("validation: one-sided baseline", file=sys.stderr)
            ceiling, top1_base = ceiling_for(cfg)
        for point in grid:
            print(f"validation: {point}", file=sys.stderr)
            c = compare(runs_for(val, arms_for(point, ceiling)), "one-sided", "two-sided")
            tuning.append(
                {
                    "point": point,
                    "compare": {k: v for k, v in c.items() if k.endswith(("ratio", "diff"))},
                    "meets": meets(c),
                }
            )
        validation = {
            "validation_seeds": val,
            "population": f"{cfg.markets}x{cfg.market_size}",
            "ceiling_top1_share": ceiling,
            "validation_one_sided_top1_share": top1_base,
            "tuning": tuning,
            "picked": pick_point(tuning),
        }
        if args.write:
            VALIDATION.parent.mkdir(parents=True, exist_ok=True)
            VALIDATION.write_text(json.dumps(validation, indent=1, default=float))
        if args.stage == "validation":
            print(json.dumps(validation["picked"]))
            return
    else:
        validation = json.loads(VALIDATION.read_text())
    picked = validation["picked"]
    populations = {}
    for name, pc in pops.items():
        ceiling, top1_base = ceiling_for(pc)
        print(f"test seeds {test} on {name}: {picked}, ceiling {ceiling}", file=sys.stderr)
        runs = runs_for(test, arms_for(picked, ceiling), pc)
        populations[name] = {
            "config": pc.model_dump(),
            "members": pc.markets * pc.market_size,
            "test_seeds": test,
            "ceiling_top1_share": ceiling,
            "validation_one_sided_top1_share": top1_base,
            "runs": runs,
            "compare": compare(runs, "one-sided", "two-sided"),
        }
    result = {
        "regime": args.regime,
        "market": regime.model_dump(),
        **validation,
        "populations": populations,
        "meets": meets(next(iter(populations.values()))["compare"]),
        "seconds": round(time.perf_counter() - t0, 1),
        "load": {
            "before": [round(x, 2) for x in load0],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    section = readme_section(result)
    print(section)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1, default=float))
        write_readme(section)


SHOWN = (
    "mutual_likes_per_1000",
    "match_share_per_week",
    "inbound_gini",
    "inbound_top1_share",
)


if __name__ == "__main__":
    main()
