"""Two-sided market steps: reciprocal scoring and exposure pacing (pure, over arrays).

In a dating marketplace a recommendation is only good if it can become a match, and a few
popular members must not absorb everyone's attention. Both steps act on *member* rows only
(``CandidateBatch.members``: profiles); a one-sided catalogue (movies, products) has none, so
there both steps return the state unchanged.

**Reciprocal** (``step_reciprocal``, as in reciprocal recommenders such as RECON, Pizzato et al.
2010): the forward preference *f* (the score so far: how much the viewer should like the
candidate, min-max scaled to ``[ε, 1]`` over the eligible rows) is combined with the backward
estimate *b* = P(candidate likes the viewer back) (:func:`reciprocal_estimate`, scaled by its
batch maximum so both directions share a scale) by a weighted harmonic mean (RECON) or a
weighted geometric mean (``product``: with weight ½ the order of f·b, the match probability
when both were calibrated). The backward estimate, for a candidate member *c* and viewer *v*::

    prior   = (Σ likes + k·prior₀) / (Σ (likes + passes) + k)     the batch's pooled rate
    rate_c  = (likes_c + k·prior) / (likes_c + passes_c + k)      c's like rate, Beta prior
    z_cv    = standardised cos(taste_c, profile_v) over the batch  c's taste for v's profile
    h_c     = likes_c / (likes_c + k)                              confidence in taste_c
    b       = σ(logit(rate_c) + γ · h_c · z_cv) · reply_c          γ = reciprocal_affinity
    reply_c = min(1, (capacity + 1) / (inbound_c + 1))             c gets to the like at all
    b       = 1 when c already liked v

so a member without history gets the prior — empirical Bayes by segment: the pooled like rate
of the batch's members (the viewer's eligible pool), which falls back to ``reciprocal_prior``
(prior₀) where nobody in it has history — and history moves the estimate in proportion to how
much of it there is.

With ``reply_capacity`` set, ``reply_c`` is congestion-aware instead (:func:`reply_chance`):
the chance that c still has reply capacity for one more like, given the live rate λ_c at which
likes reach c (``Features.like_rate``: the decayed live like count, per day) and the likes c
answers per day κ — E[min(1, κ / (N + 1))] with N ~ Poisson(λ_c) other likes competing for c's
κ answers. So P(match) ≈ P(v likes c) · P(c likes v) · P(c has capacity left), as in matching-
market rankers with congestion (Su et al. 2022): a member already receiving more likes than
they answer is worth less to one more admirer, which both raises the likes that are answered and
moves attention to the members who can still answer.

**Without a viewer** (``RerankContext.anonymous``: anonymous ``search``, ``similar`` and
``trending``) the step does not act and the ``reciprocal`` column is 0. Every factor of *b* is a
factor of P(match | the viewer likes c): the viewer's like, c's answer to *that* like, c's
capacity to get to it. A request nobody is logged into sends no like, so there is no match to
estimate, and what is left of *b* without the viewer (c's own like rate × c's congestion) would
rank members by how picky and how popular they are — for nobody's benefit, after a single like
in a small pool. Spreading attention is not this step's job: the exposure step and the pacing
step below act on every list, anonymous ones included (every list shown spends exposure:
``Discovery.record_served`` counts it), so the distribution goal does not depend on who asks.

**Pacing** (``step_pacing``): each member has an exposure budget per exposure window — the
controller's budget (``RerankContext.pacing_budget``, set by
:class:`opendisco.signals.PacingController` toward a target distribution of inbound
attention) scaled down for members who already receive more than the mean inbound attention
(:func:`member_budgets`). Spend is the member's *paced* exposure — impressions decayed with the
window as time constant, a leaky bucket that drains continuously, so the budget is paced
through the day and a budget below one impression per window still binds — and a member
running ahead of its budget is demoted smoothly, by ``pacing_strength · tanh(log((paced + 1) /
(budget + 1)))``, instead of disappearing at a cap. With ``pacing_cut`` set, a member whose
paced exposure exceeds the bucket level of ``pacing_cut`` × its budget (:func:`bucket_level`:
the level at which a member shown whenever it drops below is shown at exactly that rate) is
moved below the page cut
(:func:`below_cut`: the page is filled from the members within budget first; over-budget
members complete it only when too few others are eligible), so pacing removes attention from
the head instead of only reordering within the page. ``pacing_boost`` lifts the members
below the mean inbound attention that have budget left (:func:`pacing_boost`; a new member,
without likes or impressions, gets the whole boost: a first-impression boost). With the
controller's attention cap (``RerankContext.pacing_attention_cap``, steered toward the top-1%
share by :func:`opendisco.signals.cap_step`) a member whose inbound attention exceeds the cap is
moved below the page cut the same way, whatever its budget: its budget is its own paced rate ×
cap / attention, so it is over budget by attention / cap (:func:`attention_excess`; the
attention counts the impressions already served in the window, whose likes are on their way).
All of them act on the eligible rows only: they reorder, never add.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import gammaln, xlogy

from ._types import FEATURE_NAMES, Features, RerankContext, RerankInputs, RerankState, resort

if TYPE_CHECKING:
    from ._config import RerankConfig

__all__ = [
    "attention_excess",
    "below_cut",
    "bucket_level",
    "combine",
    "live_trending",
    "member_budgets",
    "pacing_boost",
    "pacing_penalty",
    "reciprocal_estimate",
    "reply_chance",
    "segment_prior",
    "step_pacing",
    "step_reciprocal",
]

_RECIPROCAL = FEATURE_NAMES.index("reciprocal")
_EPS = 0.05  # floor of the scaled forward preference (the weakest eligible row is not zero)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _affinity(taste: np.ndarray | None, profile: np.ndarray | None, n: int) -> np.ndarray:
    """Standardised cos(taste_c, profile_v) over the rows with a taste (0 elsewhere)."""
    z = np.zeros(n)
    if taste is None or profile is None:
        return z
    T = np.asarray(taste, dtype=np.float64)
    p = np.asarray(profile, dtype=np.float64)
    if T.ndim != 2 or T.shape[1] != p.shape[0] or not np.linalg.norm(p) > 0:
        return z
    norms = np.linalg.norm(T, axis=1)
    has = norms > 0
    if has.sum() < 2:
        return z
    cos = (T[has] @ p) / (norms[has] * np.linalg.norm(p))
    sd = float(cos.std())
    z[has] = (cos - cos.mean()) / sd if sd > 1e-9 else 0.0
    return z


def segment_prior(likes: np.ndarray, passes: np.ndarray, prior: float, k: float) -> float:
    """Pure: the empirical-Bayes prior like rate of a segment — the pooled like rate of its
    members (the rows of one batch: the viewer's eligible pool, one market and preference
    segment), itself shrunk toward the configured ``prior`` with ``k`` pseudo-counts, so a
    pool without any history gets ``prior``."""
    total = float(np.maximum(likes, 0).sum()) + float(np.maximum(passes, 0).sum())
    return (float(np.maximum(likes, 0).sum()) + k * prior) / (total + k)


def reciprocal_estimate(
    features: Features, ctx: RerankContext, cfg: RerankConfig, n: int
) -> np.ndarray:
    """P(candidate likes the viewer back) per row (see the module docstring); pure."""
    likes = features.column("likes_sent", n)
    passes = features.column("passes_sent", n)
    k = cfg.reciprocal_prior_n
    prior = segment_prior(likes, passes, cfg.reciprocal_prior, k)
    rate = (likes + k * prior) / (likes + passes + k)
    h = likes / (likes + k)
    z = _affinity(features.taste, ctx.viewer_profile, n)
    b = _sigmoid(_logit(rate) + cfg.reciprocal_affinity * h * z)
    if cfg.reply_capacity is not None:
        reply = reply_chance(features.column("like_rate", n), cfg.reply_capacity)
    else:
        inbound = np.maximum(features.inbound, 0)
        reply = np.minimum(1.0, (cfg.inbound_capacity + 1.0) / (inbound + 1.0))
    b = b * reply
    return np.where(features.column("liked_viewer", n) > 0, 1.0, b)


def reply_chance(load: np.ndarray, capacity: float | np.ndarray) -> np.ndarray:
    """Pure: the chance that one more like reaches a recipient's answer, E[min(1, capacity /
    (N + 1))] with N ~ Poisson(``load``) other likes arriving in the same period, answered in
    random order up to ``capacity`` per period (a scalar, or one per row). 1 while the load is
    well under the capacity, ≈ capacity / (load + 1) far above it; decreasing in ``load``."""
    lam = np.maximum(np.asarray(load, dtype=np.float64), 0.0)
    cap = np.broadcast_to(np.maximum(np.asarray(capacity, dtype=np.float64), 0.0), lam.shape)
    top = float(lam.max()) if lam.size else 0.0
    k = np.arange(int(np.ceil(top + 10.0 * np.sqrt(top) + 20.0)) + 1)
    kk, ll = k[None, :], lam[:, None]
    pmf = np.exp(xlogy(kk, ll) - ll - gammaln(kk + 1.0))  # Poisson pmf, (n, K)
    share = np.minimum(1.0, cap[:, None] / (k[None, :] + 1.0))
    out = (pmf * share).sum(axis=1)
    tail = np.maximum(0.0, 1.0 - pmf.sum(axis=1))  # mass beyond K: answered at the last rate
    return np.clip(out + tail * share[:, -1], 0.0, 1.0)


def combine(f: np.ndarray, b: np.ndarray, mode: str, weight: float) -> np.ndarray:
    """Weighted harmonic (``harmonic``) or geometric (``product``) mean of two preferences in
    ``(0, 1]``; ``weight`` is the backward direction's share (0 = forward only)."""
    f = np.maximum(f, 1e-9)
    b = np.maximum(b, 1e-9)
    if mode == "product":
        return f ** (1.0 - weight) * b**weight
    return 1.0 / ((1.0 - weight) / f + weight / b)


def step_reciprocal(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    member = inp.batch.members
    off = cfg.reciprocal_mode == "off" or inp.ctx.anonymous  # no viewer: no backward direction
    if off or s.order.shape[0] == 0 or not member[s.order].any():
        return s
    b = inp.X[:, _RECIPROCAL]  # the estimate the feature matrix already holds
    bmax = float(b[s.order][member[s.order]].max())
    back = np.where(member, b / bmax if bmax > 0 else 1.0, 1.0)
    lo, hi = float(s.scores[s.order].min()), float(s.scores[s.order].max())
    fwd = _EPS + (1 - _EPS) * ((s.scores - lo) / (hi - lo) if hi > lo else np.ones_like(s.scores))
    scores = combine(fwd, back, cfg.reciprocal_mode, cfg.reciprocal_weight)
    return RerankState(scores, resort(scores, s.order))


def member_budgets(budget: float, inbound: np.ndarray, mean_inbound: float | None) -> np.ndarray:
    """Pure: each member's exposure budget — ``budget`` scaled by ``min(1, mean inbound /
    their inbound)``: a member already receiving k times the average attention may be shown
    1/k as often, the others keep the whole budget (so the budget binds the members who
    concentrate attention, not everyone)."""
    if not mean_inbound or mean_inbound <= 0:
        return np.full(inbound.shape[0], float(budget))
    share = np.minimum(1.0, mean_inbound / np.maximum(inbound, 1e-9))
    return budget * share


def pacing_penalty(paced: np.ndarray, budget: float | np.ndarray, strength: float) -> np.ndarray:
    """``strength · tanh(max(0, log((paced + 1) / (budget + 1))))``: 0 while a member's paced
    exposure (impressions decayed with the window as time constant — a leaky bucket, whose
    steady state under a constant rate of r impressions per window is r) keeps within its
    budget per window, rising smoothly (bounded by ``strength``) as it runs ahead; pure."""
    over = np.log((np.maximum(paced, 0.0) + 1.0) / (np.maximum(budget, 0.0) + 1.0))
    return strength * np.tanh(np.maximum(0.0, over))


def pacing_boost(
    paced: np.ndarray,
    budget: float | np.ndarray,
    inbound: np.ndarray,
    mean_inbound: float | None,
    strength: float,
) -> np.ndarray:
    """``strength · tanh(log((mean inbound + 1) / (inbound + 1))) · (1 − paced / budget)``
    where positive: members receiving less than the mean inbound attention and spending little
    of their budget (new members first: no inbound, no impressions) are lifted, bounded by
    ``strength``; 0 once a member reaches the mean attention or its budget; pure."""
    if strength <= 0 or not mean_inbound or mean_inbound <= 0:
        return np.zeros(inbound.shape[0])
    under = np.tanh(np.maximum(0.0, np.log((mean_inbound + 1.0) / (np.maximum(inbound, 0) + 1.0))))
    room = 1.0 - np.minimum(1.0, np.maximum(paced, 0.0) / np.maximum(budget, 1e-9))
    return strength * under * room


def bucket_level(rate: np.ndarray) -> np.ndarray:
    """Pure: the leaky-bucket level (impressions decayed with the window as time constant)
    below which a member may be shown again so that it is shown at most ``rate`` times per
    window: ``1 / (exp(1 / rate) − 1)``. Shown whenever its bucket drops to the level L, a
    member's bucket jumps to L + 1 and drains back in ln((L + 1) / L) windows; setting that to
    1 / rate gives L. ≈ rate − ½ for large rates, and far below the rate for rates under one
    per window (a threshold at the rate itself would let a member with a budget of 0.2 be shown
    every 1.8 windows, 0.56 per window)."""
    r = np.maximum(np.asarray(rate, dtype=np.float64), 1e-6)
    with np.errstate(over="ignore"):
        return 1.0 / np.expm1(np.minimum(1.0 / r, 700.0))


def below_cut(order: np.ndarray, excess: np.ndarray, page: int) -> np.ndarray:
    """Pure: ``order`` with the rows whose ``excess`` (spend over budget) is above 1 moved below
    the page cut — the page is filled with the first ``page`` rows within budget (in their
    order), then come the rows over budget, least over first (so when too few rows are within
    budget, the page is completed by those closest to it, not by the most shown), then the
    rest. A permutation of ``order``: nothing is added or dropped."""
    flagged = excess[order] > 1.0
    if not flagged.any():
        return order
    ok = order[~flagged]
    over = order[flagged]
    over = over[np.argsort(excess[over], kind="stable")]
    return np.concatenate([ok[:page], over, ok[page:]])


def attention_excess(inbound: np.ndarray, exposure: np.ndarray, cap: float) -> np.ndarray:
    """Pure: each member's attention over the controller's attention ``cap`` (above 1: over
    the cap, moved below the page; the most over placed last). The attention counted is the
    inbound attention received plus the impressions served in the current exposure window —
    attention on its way: a like arrives after the impression, so a member just under the
    cap would otherwise be shown to every viewer until the likes come in and overshoot it."""
    inbound = np.maximum(np.asarray(inbound, dtype=np.float64), 0.0)
    return (inbound + np.maximum(exposure, 0.0)) / max(cap, 1e-12)


def step_pacing(s: RerankState, inp: RerankInputs, cfg: RerankConfig) -> RerankState:
    member = inp.batch.members
    budget, cap = inp.ctx.pacing_budget, inp.ctx.pacing_attention_cap
    active = cfg.pacing_strength > 0 or cfg.pacing_cut is not None or cfg.pacing_boost > 0
    if not member.any() or not ((budget is not None and active) or cap is not None):
        return s
    f = inp.features
    excess = None
    if cap is not None:
        excess = np.where(member, attention_excess(f.inbound, f.exposure, cap), 0.0)
    pen = np.zeros(len(inp.batch))
    if budget is not None and active:
        n = len(inp.batch)
        paced = f.column("paced_exposure", n) if f.paced_exposure is not None else f.exposure
        mean_inbound = inp.ctx.pacing_mean_inbound
        budgets = member_budgets(budget, f.inbound, mean_inbound)
        pen = pacing_penalty(paced, budgets, cfg.pacing_strength)
        pen = pen - pacing_boost(paced, budgets, f.inbound, mean_inbound, cfg.pacing_boost)
        pen = np.where(member, pen, 0.0)
        if cfg.pacing_cut is not None:
            level = bucket_level(cfg.pacing_cut * budgets)
            over = np.where(member, paced / np.maximum(level, 1e-12), 0.0)
            excess = over if excess is None else np.maximum(excess, over)
    if not pen.any() and (excess is None or not (excess[s.order] > 1.0).any()):
        return s
    scores = s.scores - pen
    order = resort(scores, s.order)
    if excess is not None:
        order = below_cut(order, excess, inp.page)
        scores = _scores_below_cut(scores, order, excess, inp.page)
    return RerankState(scores, order)


def _scores_below_cut(
    scores: np.ndarray, order: np.ndarray, excess: np.ndarray, page: int
) -> np.ndarray:
    """Scores that agree with :func:`below_cut`'s page: each over-budget row placed below the
    page scores under the page and every eligible row within budget, so a later step that
    re-picks the head by score and diversity (``mmr``) fills the page from those first."""
    kept = np.concatenate([order[:page], order[excess[order] <= 1.0]])  # the page, in budget
    moved = order[page:][excess[order[page:]] > 1.0]
    if not moved.size or not kept.size:
        return scores
    floor = float(scores[kept].min())
    out = scores.copy()
    steps = 1e-3 * np.arange(1, moved.shape[0] + 1)
    out[moved] = np.minimum(scores[moved], floor - steps)
    return out


def live_trending(counts: np.ndarray) -> np.ndarray:
    """The ``trending`` feature column: log1p(live decayed count), max-normalised."""
    t = np.log1p(np.maximum(counts, 0.0))
    m = float(t.max()) if t.size else 0.0
    return t / m if m > 0 else np.zeros_like(t)
