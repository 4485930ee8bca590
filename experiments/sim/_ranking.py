"""Ranking in the simulator goes through the real reranker.

:func:`serve` builds a :class:`~opendisco.rerank.CandidateBatch`, its
:class:`~opendisco.rerank.Features` and the viewer's
:class:`~opendisco.rerank.RerankContext` from the simulated state — profile embedding as the
content vector, the viewer's vector learned from the profiles they liked, quality, popularity
(prior + likes received), impressions received (exposure) and recent likes received
(inbound), interest type as category, the member as owner — and runs a
:class:`~opendisco.rerank.Reranker` with all its named steps. A treatment is therefore a real
change to ranking: a :class:`Ranker` is a ``RerankConfig`` (e.g. a popularity boost through
``merged_config``) and optionally a scorer.

:func:`pair_scores` ranks every viewer's pool once under a ranker (the bench's fast path).
A list holding candidates of both arms (two-sided and candidate-side designs) places each
candidate where its own arm's ranking of the whole pool places it
(:func:`opendisco.experiments._merge.merge_ranks`); :func:`merged_order` does that for every
viewer at once from the two arms' rankings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from opendisco.rerank import (
    CandidateBatch,
    Features,
    RerankConfig,
    RerankContext,
    Reranker,
    RerankResult,
    Scorer,
)

from .._merge import merge_ranks
from ._market import Outcomes
from ._population import Population
from ._rng import Stream, uniform

__all__ = ["Observed", "PairScores", "Ranker", "merged_order", "pair_scores", "serve"]


@dataclass(frozen=True)
class Ranker:
    """A ranking policy: the reranker's config and (optionally) a learned scorer."""

    config: RerankConfig = field(default_factory=RerankConfig)
    scorer: Scorer | None = None
    name: str = "control"

    def reranker(self) -> Reranker:
        return Reranker(self.config, self.scorer)


@dataclass
class Observed:
    """What the ranker can see at some time (mutable: the market updates it in dynamic runs)."""

    popularity: np.ndarray  # (n,) prior + likes received so far
    exposure: np.ndarray  # (n,) impressions received in the window
    inbound: np.ndarray  # (n,) likes received in the window
    user_vector: np.ndarray  # (n, dim) the viewer's learned preference vector

    @classmethod
    def initial(cls, pop: Population) -> Observed:
        """Before any history: the prior popularity and the stated preferences."""
        n = pop.n
        return cls(pop.prior.astype(float).copy(), np.zeros(n), np.zeros(n), pop.stated.copy())

    def copy(self) -> Observed:
        return Observed(
            self.popularity.copy(), self.exposure.copy(), self.inbound.copy(),
            self.user_vector.copy(),
        )  # fmt: skip


_CATEGORIES: dict[int, list[str]] = {}


def _categories(types: int) -> list[str]:
    if types not in _CATEGORIES:
        _CATEGORIES[types] = [f"type{t}" for t in range(types)]
    return _CATEGORIES[types]


def candidate_batch(pop: Population, obs: Observed, cand: np.ndarray) -> CandidateBatch:
    """The candidates (member indices) as the reranker's batch (one source: the market)."""
    n = cand.shape[0]
    return CandidateBatch(
        ids=[pop.ids[j] for j in cand.tolist()],
        fused=np.ones(n),
        source_names=["market"],
        source_scores=np.ones((n, 1)),
        category=pop.kind[cand],
        categories=_categories(pop.config.types),
        owner=np.arange(n, dtype=np.int64),
        owners=[pop.ids[j] for j in cand.tolist()],
        quality=pop.quality[cand],
        popularity=obs.popularity[cand],
        age_days=pop.age_days[cand],
        available=np.ones(n, dtype=bool),
    )


def features(pop: Population, obs: Observed, cand: np.ndarray) -> Features:
    n = cand.shape[0]
    return Features(
        content=pop.content[cand],
        behaviour=np.zeros((n, 1)),
        exposure=obs.exposure[cand],
        inbound=obs.inbound[cand],
        graph=np.zeros(n),
    )


def serve(
    pop: Population,
    obs: Observed,
    viewer: int,
    candidates: np.ndarray,
    ranker: Ranker | Reranker,
    k: int | None = None,
) -> RerankResult:
    """One request: rank ``candidates`` (member indices) for ``viewer`` with the real
    reranker; ``result.order`` indexes ``candidates``."""
    reranker = ranker.reranker() if isinstance(ranker, Ranker) else ranker
    ctx = RerankContext(user_vector=obs.user_vector[viewer], k=k)
    return reranker.run(candidate_batch(pop, obs, candidates), features(pop, obs, candidates), ctx)


def merged(
    pop: Population,
    obs: Observed,
    viewer: int,
    candidates: np.ndarray,
    control: Ranker,
    treated: Ranker,
    mask: np.ndarray,
    k: int | None,
    seed: int = 0,
) -> np.ndarray:
    """One request of a pair-level design: rows of ``candidates`` best first, each candidate
    at its own arm's position (``mask``: treated candidates)."""
    rc = serve(pop, obs, viewer, candidates, control, k=k)
    rt = serve(pop, obs, viewer, candidates, treated, k=k)
    tie = uniform(seed, Stream.ORDER, viewer, candidates)
    return merge_ranks(rc.order, rt.order, mask, tie)


@dataclass(frozen=True)
class PairScores:
    """Every viewer's pool ranked once: ``score`` per pair (``-inf`` where the rules drop it)
    and ``order`` (pair indices grouped by viewer, best first; dropped pairs excluded)."""

    score: np.ndarray  # (P,)
    order: np.ndarray  # (<= P,)
    ptr: np.ndarray  # (n+1,) offsets of each viewer's block in ``order``


def pair_scores(pop: Population, obs: Observed, ranker: Ranker) -> PairScores:
    """Run ``ranker`` over every viewer's whole pool (one reranker call per viewer)."""
    reranker = ranker.reranker()
    score = np.full(pop.n_pairs, -np.inf)
    blocks: list[np.ndarray] = []
    ptr = np.zeros(pop.n + 1, dtype=np.int64)
    for v in range(pop.n):
        lo, hi = int(pop.ptr[v]), int(pop.ptr[v + 1])
        if hi > lo:
            res = serve(pop, obs, v, pop.pair_candidate[lo:hi], reranker, k=hi - lo)
            score[lo + res.order] = res.scores
            blocks.append(lo + res.order)
            ptr[v + 1] = res.order.shape[0]
    return PairScores(
        score, np.concatenate(blocks) if blocks else np.zeros(0, np.int64), np.cumsum(ptr)
    )


def pair_ranks(pop: Population, s: PairScores) -> np.ndarray:
    """Each pair's position in its viewer's ranking (inf where the rules dropped it)."""
    rank = np.full(pop.n_pairs, np.inf)
    rank[s.order] = np.arange(s.order.shape[0]) - np.repeat(s.ptr[:-1], np.diff(s.ptr))
    return rank


def merged_order(
    pop: Population,
    control: PairScores,
    treated: PairScores,
    mask: np.ndarray,
    seed: int = 0,
    depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_ranks` for every viewer at once: pairs grouped by viewer, each at its
    position in the treated ranking where ``mask[pair]`` and in the control ranking
    elsewhere. Returns ``(order, ptr)`` like :class:`PairScores`. With ``depth`` only pairs
    whose own rank is below it are kept: the list is then exact for its first positions
    (every pair ranked above ``depth`` by its arm is in it), deeper than a run can serve."""
    return merge_ranked(pop, pair_ranks(pop, control), pair_ranks(pop, treated), mask, seed, depth)


def merge_ranked(
    pop: Population,
    rank_c: np.ndarray,
    rank_t: np.ndarray,
    mask: np.ndarray,
    seed: int = 0,
    depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merged_order` from the two arms' :func:`pair_ranks` (which a caller ranking
    many assignments in one world computes once)."""
    rank = np.where(mask, rank_t, rank_c)
    idx = np.flatnonzero(np.isfinite(rank) if depth is None else rank < depth)
    tie = uniform(seed, Stream.ORDER, pop.pair_viewer[idx], pop.pair_candidate[idx])
    width = float(rank[idx].max()) + 2.0 if idx.size else 1.0
    # one float key: viewer blocks apart, then the arm's rank, then the coin
    order = idx[np.argsort(pop.pair_viewer[idx] * width + rank[idx] + 0.5 * tie, kind="stable")]
    counts = np.bincount(pop.pair_viewer[idx], minlength=pop.n)
    return order, np.concatenate([[0], np.cumsum(counts)])


# -- features from the market ---------------------------------------------------------------
def observed_after(pop: Population, before: Observed, pre: Outcomes) -> Observed:
    """Features after the pre-period: popularity = prior + likes received, exposure =
    impressions received, inbound = likes received, viewer vector learned from the likes."""
    n = pop.n
    cand = pop.pair_candidate[pre.imp_pair]
    exposure = np.bincount(cand, minlength=n).astype(float)
    inbound = np.bincount(cand[pre.imp_liked], minlength=n).astype(float)
    liked = pre.imp_pair[pre.imp_liked]
    acc = before.user_vector.copy()
    np.add.at(acc, pop.pair_viewer[liked], pop.content[pop.pair_candidate[liked]])
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    return Observed(pop.prior + inbound, exposure, inbound, acc / np.where(norm > 0, norm, 1))


def refresh_observed(
    pop: Population,
    obs: Observed,
    shown: np.ndarray,
    liked: np.ndarray,
    window: int,
    acc: np.ndarray,
) -> None:
    """Dynamic runs: today's impressions (``shown``) and likes (``liked``, pair indices) enter
    tomorrow's features (exposure and inbound decay over ``window`` days; ``acc`` sums the
    viewer's liked profiles)."""
    decay = 1.0 - 1.0 / window
    obs.exposure *= decay
    obs.inbound *= decay
    np.add.at(obs.exposure, pop.pair_candidate[shown], 1.0)
    np.add.at(obs.inbound, pop.pair_candidate[liked], 1.0)
    np.add.at(obs.popularity, pop.pair_candidate[liked], 1.0)
    np.add.at(acc, pop.pair_viewer[liked], pop.content[pop.pair_candidate[liked]])
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    obs.user_vector[:] = acc / np.where(norm > 0, norm, 1)
