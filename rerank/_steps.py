"""Named pure steps over arrays.

Every step takes the current :class:`RerankState` (scores per candidate and the ranked order of
eligible candidates), the immutable :class:`RerankInputs` and the config, and returns a *new*
state; none mutates its inputs, so the trace can keep every intermediate state by reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from ._market import live_trending, reciprocal_estimate, step_pacing, step_reciprocal
from ._types import (
    FEATURE_NAMES,
    PERCENTILE_COLUMNS,
    PROFILE_COLUMNS,
    RANKED_SOURCES,
    CandidateBatch,
    Features,
    RerankContext,
    RerankInputs,
    RerankState,
    Scorer,
    resort,
)

if TYPE_CHECKING:
    from ._config import RerankConfig

__all__ = [
    "STEPS",
    "LinearScorer",
    "RerankInputs",
    "RerankState",
    "Scorer",
    "apply_caps",
    "apply_pins",
    "assemble_features",
    "exposure_adjustment",
    "fatigue_penalty",
    "mmr_select",
]

_COL = {n: i for i, n in enumerate(FEATURE_NAMES)}
_LN2 = float(np.log(2.0))


# --- pure math ------------------------------------------------------------------------------


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    v = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None


def _cos(M: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    u = _unit(v)
    if u is None or M.shape[1] != u.shape[0]:
        return np.zeros(M.shape[0])
    return M @ u


def assemble_features(
    batch: CandidateBatch, features: Features, ctx: RerankContext, cfg: RerankConfig
) -> np.ndarray:
    """The feature matrix (n, len(FEATURE_NAMES)); columns in :data:`FEATURE_NAMES` order."""
    n = len(batch)
    X = np.zeros((n, len(FEATURE_NAMES)))
    fmax = float(batch.fused.max()) if n else 0.0
    X[:, _COL["fused"]] = batch.fused / fmax if fmax > 0 else 0.0
    X[:, _COL["content_sim"]] = _cos(features.content, ctx.user_vector)
    X[:, _COL["behaviour_sim"]] = _cos(features.behaviour, ctx.behaviour_vector)
    X[:, _COL["graph"]] = np.log1p(features.graph)
    X[:, _COL["quality"]] = batch.quality
    pop = np.log1p(np.maximum(batch.popularity, 0.0))
    pmax = float(pop.max()) if n else 0.0
    X[:, _COL["popularity"]] = pop / pmax if pmax > 0 else 0.0
    X[:, _COL["freshness"]] = np.exp(-batch.age_days * _LN2 / cfg.freshness_half_life_days)
    X[:, _COL["exposure"]] = np.log1p(features.exposure)
    X[:, _COL["inbound"]] = np.log1p(features.inbound)
    ns = (batch.source_scores > 0).sum(axis=1) if batch.source_scores.size else np.ones(n)
    X[:, _COL["n_sources"]] = ns
    # learning-to-rank columns (weight 0 in the default linear model)
    u = ctx.behaviour_vector
    unorm = float(np.linalg.norm(u)) if u is not None else 0.0
    bnorm = features.behaviour_norm if features.behaviour_norm is not None else 1.0
    X[:, _COL["behaviour_dot"]] = X[:, _COL["behaviour_sim"]] * bnorm * unorm
    X[:, _COL["log_popularity"]] = pop
    X[:, _COL["history"]] = np.log1p(ctx.history)
    X[:, _COL["graph_norm"]] = np.log1p(
        features.graph / np.sqrt(1.0 + np.maximum(batch.popularity, 0.0))
    )
    age = batch.age_days
    X[:, _COL["log_age"]] = np.log1p(np.where(np.isfinite(age), age, 0.0))
    for name in PROFILE_COLUMNS:
        values = features.affinity.get(name)
        if values is not None:
            X[:, _COL[name]] = values
    col = {name: j for j, name in enumerate(batch.source_names)}
    for s in RANKED_SOURCES:
        j = col.get(s)
        if j is None:
            continue
        score = batch.source_scores[:, j]
        smax = float(score.max()) if n else 0.0
        X[:, _COL[f"score_{s}"]] = score / smax if smax > 0 else 0.0
        if batch.source_ranks is not None:
            rank = batch.source_ranks[:, j]
            X[:, _COL[f"rr_{s}"]] = np.divide(1.0, rank, out=np.zeros(n), where=rank > 0)
    member = batch.members
    if member.any() and not ctx.anonymous:  # the backward direction needs a viewer
        X[:, _COL["reciprocal"]] = np.where(
            member, reciprocal_estimate(features, ctx, cfg, len(batch)), 0.0
        )
        X[:, _COL["liked_viewer"]] = features.column("liked_viewer", n) * member
        X[:, _COL["mutual"]] = np.log1p(features.column("mutual", n)) * member
    X[:, _COL["trending"]] = live_trending(features.column("trending", n))
    X[:, _COL["item_sim"]] = features.column("item_sim", n)
    X[:, _COL["item_sim_recent"]] = features.column("item_sim_recent", n)
    # last: the linear model's score of the columns above (its own column weighs nothing)
    w = cfg.weight_vector()
    w[_COL["linear"]] = 0.0
    X[:, _COL["linear"]] = X @ w
    for name in PERCENTILE_COLUMNS:
        X[:, _COL[f"pct_{name}"]] = list_percentile(X[:, _COL[name]])
    return X


def list_percentile(values: np.ndarray) -> np.ndarray:
    """Pure: each value's percentile within its list, in [0, 1] (ties share their mean rank;
    a single row is 0.5). Scale-free: the same column means the same on any dataset."""
    n = len(values)
    if n <= 1:
        return np.full(n, 0.5)
    return (average_ranks(values) - 1.0) / (n - 1.0)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Pure: ranks 1..n, ties sharing their mean rank (``scipy.stats.rankdata``'s "average",
    NaN in, NaN out; a third of its time on a list of a few hundred: it runs per request)."""
    n = len(values)
    if n == 0 or np.isnan(values).any():
        return np.full(n, np.nan)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.empty(n, dtype=bool)  # np.r_ costs ~10x this in a per-request step
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    first = np.flatnonzero(starts)  # each tie group's start
    ends = np.append(first[1:], n)
    ranks = np.empty(n)
    ranks[order] = np.repeat((first + ends + 1) / 2.0, ends - first)
    return ranks


class LinearScorer:
    """``X @ w`` with the weights of a :class:`RerankConfig`."""

    def __init__(self, cfg: RerankConfig) -> None:
        self.w = cfg.weight_vector()

    def score(self, X: np.ndarray) -> np.ndarray:
        return X @ self.w


def source_bonus(batch: CandidateBatch, weights: Mapping[str, float]) -> np.ndarray:
    bonus = np.zeros(len(batch))
    for j, name in enumerate(batch.source_names):
        w = weights.get(name)
        if w:
            bonus += w * (batch.source_scores[:, j] > 0)
    return bonus


def fatigue_penalty(
    category: np.ndarray, categories: list[object], fatigue: Mapping[str, float], strength: float
) -> np.ndarray:
    """``strength * log1p(hides+passes of the item's category)`` per item (0 without category)."""
    if not fatigue or not categories:
        return np.zeros(category.shape[0])
    per_cat = np.array([float(fatigue.get(str(c), 0.0)) for c in categories] + [0.0])
    return strength * np.log1p(per_cat[category])  # code -1 picks the trailing 0


def exposure_adjustment(
    exposure: np.ndarray,
    inbound: np.ndarray,
    *,
    target: float | None,
    strength: float,
    capacity: float,
    inbound_strength: float,
) -> np.ndarray:
    """Boost under-exposed, damp over-exposed items toward ``target`` (bounded by ±strength);
    damp recipients whose recent inbound attention exceeds their ``capacity``."""
    t = float(exposure.mean()) if target is None else float(target)
    balance = strength * np.tanh(np.log((t + 1.0) / (exposure + 1.0)))
    overload = inbound_strength * np.maximum(0.0, np.log((inbound + 1.0) / (capacity + 1.0)))
    return balance - overload


def mmr_select(rel: np.ndarray, V: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Greedy maximal marginal relevance: positions (into ``rel``) of the first ``k`` picks.

    ``rel`` is min-max normalised; similarity is cosine of the rows of ``V`` (unit or zero).
    """
    m = rel.shape[0]
    k = min(k, m)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = float(rel.min()), float(rel.max())
    r = (rel - lo) / (hi - lo) if hi > lo else np.ones(m)
    max_sim = np.zeros(m)
    taken = np.zeros(m, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    for i in range(k):
        val = lam * r - (1.0 - lam) * max_sim
        val[taken] = -np.inf
        j = int(np.argmax(val))
        picks[i] = j
        taken[j] = True
        if i + 1 < k:
            np.maximum(max_sim, V @ V[j], out=max_sim)
    return picks


def apply_caps(
    order: np.ndarray,
    groups: list[np.ndarray],
    caps: list[int | None],
    page: int,
) -> np.ndarray:
    """Fill the first ``page`` slots keeping at most ``cap`` items per group value (code -1 is
    never capped); over-cap items are deferred right after the page, in their order. When too
    few items satisfy the caps, the page is completed from the deferred ones."""
    active = [(g, c) for g, c in zip(groups, caps, strict=True) if c is not None]
    if not active or order.shape[0] == 0:
        return order
    counts: list[dict[int, int]] = [{} for _ in active]
    rows = order.tolist()
    head: list[int] = []
    deferred: list[int] = []
    cut = len(rows)
    for pos, row in enumerate(rows):
        if len(head) >= page:
            cut = pos
            break
        codes = [int(g[row]) for g, _ in active]
        if any(
            code >= 0 and cnt.get(code, 0) >= c
            for code, (_, c), cnt in zip(codes, active, counts, strict=True)
        ):
            deferred.append(row)
            continue
        for code, cnt in zip(codes, counts, strict=True):
            if code >= 0:
                cnt[code] = cnt.get(code, 0) + 1
        head.append(row)
    if len(head) < page:
        need = page - len(head)
        head, deferred = head + deferred[:need], deferred[need:]
    return np.asarray(head + deferred + rows[cut:], dtype=np.int64)


def apply_pins(order: np.ndarray, pins: Mapping[int, int]) -> np.ndarray:
    """Move rows to fixed 0-based positions (rows not in ``order`` are ignored)."""
    present = {r: p for r, p in pins.items() if r in set(order.tolist())}
    if not present:
        return order
    rest = [r for r in order.tolist() if r not in present]
    for row, p in sorted(present.items(), key=lambda kv: kv[1]):
        rest.insert(min(max(p, 0), len(rest)), row)
    return np.asarray(rest, dtype=np.int64)


# --- steps ------------------------------------------------------------------------------------


def step_score(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    scores = np.asarray(inp.scorer.score(inp.X), dtype=np.float64)
    if cfg.source_weights:
        scores = scores + source_bonus(inp.batch, cfg.source_weights)
    return RerankState(scores, resort(scores, s.order))


def step_rules(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    b = inp.batch
    keep = np.ones(len(b), dtype=bool)
    if cfg.require_available:
        keep &= b.available
    if inp.ctx.bans:
        bans = inp.ctx.bans
        keep &= np.fromiter((i not in bans for i in b.ids), dtype=bool, count=len(b))
    if cfg.banned_categories:
        banned = {str(c).lower() for c in cfg.banned_categories}
        bad = np.array([str(c).lower() in banned for c in b.categories] + [False])
        keep &= ~bad[b.category]
    return RerankState(s.scores, s.order[keep[s.order]])


def step_fatigue(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    pen = fatigue_penalty(
        inp.batch.category, inp.batch.categories, inp.ctx.fatigue, cfg.fatigue_strength
    )
    if not pen.any():
        return s
    scores = s.scores - pen
    return RerankState(scores, resort(scores, s.order))


def step_exposure(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    f = inp.features
    adj = exposure_adjustment(
        f.exposure,
        f.inbound,
        target=cfg.exposure_target,
        strength=cfg.exposure_strength,
        capacity=cfg.inbound_capacity,
        inbound_strength=cfg.inbound_strength,
    )
    if not adj.any():
        return s
    scores = s.scores + adj
    return RerankState(scores, resort(scores, s.order))


def step_mmr(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    if cfg.mmr_lambda >= 1.0 or s.order.shape[0] < 2:
        return s
    k = min(inp.page, s.order.shape[0])
    pool = s.order[: max(5 * k, 50)]  # diversify within the head
    picks = mmr_select(s.scores[pool], inp.features.content[pool], k, cfg.mmr_lambda)
    head = pool[picks]
    taken = np.zeros(len(inp.batch), dtype=bool)
    taken[head] = True
    return RerankState(s.scores, np.concatenate([head, s.order[~taken[s.order]]]))


def step_caps(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    order = apply_caps(
        s.order,
        [inp.batch.category, inp.batch.owner],
        [cfg.max_per_category, cfg.max_per_owner],
        inp.page,
    )
    return RerankState(s.scores, order)


def step_pins(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    if not inp.ctx.pins:
        return s
    row = {i: r for r, i in enumerate(inp.batch.ids)}
    pins = {row[i]: p for i, p in inp.ctx.pins.items() if i in row}
    return RerankState(s.scores, apply_pins(s.order, pins))


Step = Callable[[RerankState, RerankInputs, "RerankConfig"], RerankState]

STEPS: dict[str, Step] = {
    "score": step_score,
    "rules": step_rules,
    "fatigue": step_fatigue,
    "exposure": step_exposure,
    "reciprocal": step_reciprocal,
    "pacing": step_pacing,
    "mmr": step_mmr,
    "caps": step_caps,
    "pins": step_pins,
}
