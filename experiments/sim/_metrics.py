"""Marketplace health metrics of a run (what issues 15–17 report).

* ``mutual_likes_per_1000``: likes that were reciprocated (a mutual like: the receiver liked
  the proposer back, on review or before) per 1,000 impressions;
* ``match_share_per_week``: per simulated week, the share of all members with at least one
  new match (either side), averaged over the run's weeks;
* inbound attention (likes received per member): its Gini coefficient and the share the top
  1% of members receive.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._market import Outcomes
from ._population import Population

__all__ = [
    "gini",
    "inbound_attention",
    "match_share_per_week",
    "mutual_likes_per_1000",
    "summary",
    "top_share",
]


def mutual_likes_per_1000(out: Outcomes) -> float:
    return 1000.0 * float(out.imp_mutual.sum()) / max(out.impressions, 1)


def match_share_per_week(out: Outcomes, pop: Population, week_days: int = 7) -> float:
    """Mean over the run's (whole) weeks of the share of members with >= 1 new match."""
    days = out.active.shape[0]
    weeks = max(days // week_days, 1)
    shares = []
    for w in range(weeks):
        lo = out.first_day + w * week_days
        sel = (out.match_day >= lo) & (out.match_day < lo + week_days)
        pairs = out.match_pair[sel]
        members = np.union1d(pop.pair_viewer[pairs], pop.pair_candidate[pairs])
        shares.append(members.shape[0] / pop.n)
    return float(np.mean(shares))


def inbound_attention(out: Outcomes, pop: Population) -> np.ndarray:
    """Likes received per member during the run."""
    liked = out.imp_pair[out.imp_liked]
    return np.bincount(pop.pair_candidate[liked], minlength=pop.n).astype(float)


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0: equal, → 1: one member has everything)."""
    v = np.sort(np.asarray(x, dtype=float))
    n, total = v.shape[0], float(v.sum())
    if n == 0 or total <= 0:
        return 0.0
    return float((2.0 * np.arange(1, n + 1) - n - 1) @ v / (n * total))


def top_share(x: np.ndarray, q: float = 0.01) -> float:
    """Share of the total held by the top ``q`` fraction (at least one member)."""
    v = np.sort(np.asarray(x, dtype=float))[::-1]
    total = float(v.sum())
    if total <= 0:
        return 0.0
    return float(v[: max(1, round(q * v.shape[0]))].sum() / total)


def summary(out: Outcomes, pop: Population) -> dict[str, Any]:
    inbound = inbound_attention(out, pop)
    return {
        "impressions": out.impressions,
        "likes": int(out.imp_liked.sum()),
        "mutual_likes": int(out.imp_mutual.sum()),
        "mutual_likes_per_1000": mutual_likes_per_1000(out),
        "matches": int(out.match_pair.shape[0]),
        "messages": int(out.match_message.sum()),
        "replies": int(out.match_reply.sum()),
        "match_share_per_week": match_share_per_week(out, pop),
        "inbound_gini": gini(inbound),
        "inbound_top1_share": top_share(inbound, 0.01),
    }
