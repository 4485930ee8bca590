"""Array containers the steps work on: candidates, their features, the request context."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "PERCENTILE_COLUMNS",
    "PROFILE_COLUMNS",
    "RANKED_SOURCES",
    "CandidateBatch",
    "Features",
    "RerankContext",
    "RerankInputs",
    "RerankState",
    "Scorer",
    "resort",
]

#: raw columns also given as their per-list percentile (``pct_<name>``)
PERCENTILE_COLUMNS: tuple[str, ...] = (
    "item_sim",
    "item_sim_recent",
    "behaviour_dot",
    "content_sim",
    "graph",
    "linear",
)
#: Columns of the feature matrix built by :func:`opendisco.rerank.assemble_features`.
FEATURE_NAMES: tuple[str, ...] = (
    "fused",  # candidate fusion score, max-normalised within the batch
    "content_sim",  # cosine(user vector, item content vector)
    "behaviour_sim",  # cosine(user behaviour vector, item behaviour vector)
    "graph",  # co-engagement proximity to the user's recent items, log1p
    "quality",
    "popularity",  # log1p, max-normalised
    "freshness",  # exp(-age / half life)
    "exposure",  # log1p(impressions in the window)
    "inbound",  # log1p(recent likes/messages the recipient received)
    "n_sources",  # how many candidate sources proposed the item
    # learning-to-rank features (weight 0 in the linear model: LambdaMART uses them)
    "behaviour_dot",  # user behaviour vector . item behaviour vector (the ALS score)
    "log_popularity",  # log1p(popularity), not batch-normalised
    "history",  # log1p(the member's recent positives): same for every row of a list
    *(f"rr_{s}" for s in ("graph", "semantic", "lexical", "behaviour", "trending", "fresh")),
    *(f"score_{s}" for s in ("graph", "semantic", "lexical", "behaviour", "trending", "fresh")),
    "graph_norm",  # log1p(co-engagement weight / sqrt(1 + popularity)): cosine-like
    "log_age",  # log1p(item age in days): recency on any time scale
    # the member's taste profile (rerank._profile): affinity of the candidate to it
    "category_affinity",
    "tag_affinity",
    "age_gap",
    "newest_gap",
    "pop_gap",
    "linear",  # the linear model's score of the row: a learned ranker can start from it
    # two-sided markets (0 for items that are not member profiles; see rerank._market)
    "reciprocal",  # estimated P(candidate likes the viewer back), in [0, 1]
    "liked_viewer",  # 1 when the candidate already liked the viewer
    "mutual",  # log1p co-engagement from the viewer's matches (friends of matches)
    "trending",  # log1p(live decayed likes/matches), max-normalised within the batch
    # a trained item–item model (EASE rows, signals.ItemSimilarity): summed weight from the
    # member's recent positives; then per-list percentiles (0 = lowest in the list, 1 =
    # highest; ties share the mean), robust to each dataset's score scales
    "item_sim",
    # the same rows weighted by recency: the i-th most recent positive's row counts
    # 0.5^(i / item_sim_half_life) (short-term taste; the ranker learns the mix of the two)
    "item_sim_recent",
    *(f"pct_{c}" for c in PERCENTILE_COLUMNS),
)
#: the per-candidate columns the feature store computes from the member's profile
PROFILE_COLUMNS: tuple[str, ...] = (
    "category_affinity",
    "tag_affinity",
    "age_gap",
    "newest_gap",
    "pop_gap",
)
#: candidate sources with their own reciprocal-rank (``rr_*``) and score (``score_*``, divided
#: by the source's batch maximum) columns; 0 where the source did not propose the item
RANKED_SOURCES: tuple[str, ...] = ("graph", "semantic", "lexical", "behaviour", "trending", "fresh")


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    table: dict[Any, int] = {}
    codes = np.fromiter(
        (table.setdefault(v, len(table)) if v is not None else -1 for v in values),
        dtype=np.int64,
        count=len(values),
    )
    return codes, list(table)


def _age_days(value: Any, now: datetime) -> float:
    if value is None:
        return np.inf
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return np.inf
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return max(0.0, (now - value).total_seconds() / 86400.0)
    return np.inf


@dataclass(frozen=True)
class CandidateBatch:
    """Candidates as aligned arrays (row i describes ``ids[i]``)."""

    ids: list[str]
    fused: np.ndarray  # (n,)
    source_names: list[str]
    source_scores: np.ndarray  # (n, S); 0 where the source did not propose the item
    category: np.ndarray  # (n,) int codes, -1 = none
    categories: list[Any]
    owner: np.ndarray  # (n,) int codes, -1 = none
    owners: list[Any]
    quality: np.ndarray
    popularity: np.ndarray
    age_days: np.ndarray
    available: np.ndarray  # bool
    items: list[Mapping[str, Any]] = field(default_factory=list)
    #: id -> packed float16 vectors carried by the candidate hits (``ingest.PACKED_FIELD``);
    #: the feature store decodes these instead of fetching the vectors again
    packed: Mapping[str, str] = field(default_factory=dict)
    #: (n,) bool: the candidate is a member (a ``profile``): reciprocity and pacing apply to it;
    #: None = no member in the batch (a one-sided catalogue)
    member: np.ndarray | None = None
    #: (n, S) 1-based rank of the item in each source (columns of ``source_names``); 0 = absent
    source_ranks: np.ndarray | None = None

    @property
    def members(self) -> np.ndarray:
        return self.member if self.member is not None else np.zeros(len(self.ids), dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_items(
        cls,
        items: Sequence[Mapping[str, Any]],
        *,
        fused: Sequence[float] | None = None,
        sources: Sequence[Mapping[str, float]] | None = None,
        ranks: Sequence[Mapping[str, int]] | None = None,
        now: datetime | None = None,
    ) -> CandidateBatch:
        """From item dicts (``id`` or ``_id`` plus the item fields)."""
        now = now or datetime.now(UTC)
        n = len(items)
        ids = [str(it.get("id", it.get("_id"))) for it in items]
        srcs = list(sources) if sources is not None else [{} for _ in range(n)]
        names = sorted({k for s in srcs for k in s})
        col = {k: j for j, k in enumerate(names)}
        ss = np.zeros((n, len(names)))
        for i, s in enumerate(srcs):
            for k, v in s.items():
                ss[i, col[k]] = float(v or 0.0)
        sr = None
        if ranks is not None:
            sr = np.zeros((n, len(names)))
            for i, rk in enumerate(ranks):
                for k, v in rk.items():
                    if k in col:
                        sr[i, col[k]] = float(v or 0)
        cat, cats = _codes([it.get("category") for it in items])
        own, owns = _codes([it.get("owner_id") for it in items])
        member = np.array([it.get("kind") == "profile" for it in items], dtype=bool)
        return cls(
            ids=ids,
            fused=np.asarray(fused if fused is not None else np.ones(n), dtype=np.float64),
            source_names=names,
            source_scores=ss,
            category=cat,
            categories=cats,
            owner=own,
            owners=owns,
            quality=np.array([float(it.get("quality") or 0.0) for it in items]),
            popularity=np.array([float(it.get("popularity") or 0.0) for it in items]),
            age_days=np.array([_age_days(it.get("created_at"), now) for it in items]),
            available=np.array([it.get("available", True) is not False for it in items]),
            items=list(items),
            member=member if member.any() else None,
            source_ranks=sr,
        )

    @classmethod
    def from_candidates(cls, cands: Sequence[Any], now: datetime | None = None) -> CandidateBatch:
        """From ``opendisco.queries.Candidate`` objects (``id, sources, fused, item, packed``)."""
        items = [{**(c.item or {}), "id": c.id} for c in cands]
        batch = cls.from_items(
            items,
            fused=[c.fused for c in cands],
            sources=[c.sources for c in cands],
            ranks=[getattr(c, "ranks", None) or {} for c in cands],
            now=now,
        )
        packed = {c.id: c.packed for c in cands if c.packed}
        return replace(batch, packed=packed) if packed else batch


@dataclass(frozen=True)
class Features:
    """Per-candidate looked-up features, rows aligned with the batch (zeros when missing).

    The two-sided fields (None: not looked up, read as zeros) describe each candidate's member
    (the owner of a profile) as a *viewer* — what the reciprocal estimate needs — and the
    live signals: ``taste`` (their user-state content vector), ``likes_sent``/``passes_sent``
    (their like rate), ``liked_viewer``, ``mutual``, ``trending``, and ``paced_exposure`` (each
    candidate's impressions decayed with the exposure window as time constant: what pacing
    compares with its budget).
    """

    content: np.ndarray  # (n, d) L2-normalised content vectors
    behaviour: np.ndarray  # (n, b) L2-normalised behaviour vectors (zeros if none)
    exposure: np.ndarray  # (n,) impressions in the current window
    inbound: np.ndarray  # (n,) recent likes/messages received (profiles)
    graph: np.ndarray  # (n,) co-engagement weight to the user's recent items
    #: (n,) norms of the behaviour vectors before normalising (the ALS score's item part)
    behaviour_norm: np.ndarray | None = None
    taste: np.ndarray | None = None  # (n, d) the candidate member's taste (zeros: no history)
    likes_sent: np.ndarray | None = None  # (n,) likes the candidate member gave
    passes_sent: np.ndarray | None = None  # (n,) passes/skips/hides the candidate member gave
    liked_viewer: np.ndarray | None = None  # (n,) 1 = the candidate already liked the viewer
    mutual: np.ndarray | None = None  # (n,) co-engagement weight from the viewer's matches
    trending: np.ndarray | None = None  # (n,) live decayed likes/matches
    paced_exposure: np.ndarray | None = None  # (n,) impressions, leaky bucket (per window)
    #: (n,) likes reaching the candidate per day now: the live decayed count (``trending``)
    #: divided by its mean age (half-life / ln 2) — the congestion the reply chance reads
    like_rate: np.ndarray | None = None
    #: :data:`PROFILE_COLUMNS` name -> (n,) affinity of each candidate to the member's profile
    affinity: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: (n,) summed trained item–item weight from the user's recent items (None: no table)
    item_sim: np.ndarray | None = None
    #: (n,) the same sum with the rows weighted by the positives' recency (None: no table)
    item_sim_recent: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, dim: int = 384, bdim: int = 32) -> Features:
        return cls(np.zeros((n, dim)), np.zeros((n, bdim)), np.zeros(n), np.zeros(n), np.zeros(n))

    def column(self, name: str, n: int) -> np.ndarray:
        """An optional per-candidate array, zeros when it was not looked up."""
        v = getattr(self, name)
        return np.zeros(n) if v is None else np.asarray(v, dtype=np.float64)


@dataclass(frozen=True)
class RerankContext:
    """Who asks and what rules apply to this request."""

    user_vector: np.ndarray | None = None
    behaviour_vector: np.ndarray | None = None
    fatigue: Mapping[str, float] = field(default_factory=dict)  # category -> hides/passes
    bans: frozenset[str] = frozenset()  # item ids never shown (blocked, hidden)
    pins: Mapping[str, int] = field(default_factory=dict)  # item id -> 0-based position
    k: int | None = None  # page size override
    history: int = 0  # the member's recent positives (a list-level ranking feature)
    #: the viewer's own profile content vector (what candidates' tastes are compared with)
    viewer_profile: np.ndarray | None = None
    #: no member asks (anonymous search, similar, trending): the two-sided terms
    #: that need a viewer — P(candidate likes the viewer) and its congestion-aware reply
    #: chance — do not act (the ``reciprocal`` column is 0, the reciprocal step keeps the
    #: order); exposure balancing and pacing still act (every list shown spends exposure)
    anonymous: bool = False
    #: impressions per member per exposure window before pacing demotes (controller output);
    #: None = pacing off
    pacing_budget: float | None = None
    #: mean inbound attention per member (the controller's measurement): a member receiving
    #: more gets a proportionally smaller share of ``pacing_budget``
    pacing_mean_inbound: float | None = None
    #: ceiling on a member's inbound attention (the controller's attention cap, same units as
    #: ``Features.inbound``): a member above it leaves the page; None = no cap
    pacing_attention_cap: float | None = None


class Scorer(Protocol):
    """Anything that turns a feature matrix (n, len(FEATURE_NAMES)) into scores (n,)."""

    def score(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RerankState:
    scores: np.ndarray  # (n,) score per candidate (row of the batch)
    order: np.ndarray  # (m,) eligible candidate rows, best first


@dataclass(frozen=True)
class RerankInputs:
    batch: CandidateBatch
    features: Features
    ctx: RerankContext
    X: np.ndarray  # (n, F) feature matrix
    scorer: Scorer
    page: int


def resort(scores: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The eligible rows ``order`` sorted by ``scores``, best first (stable)."""
    return order[np.argsort(-scores[order], kind="stable")]
