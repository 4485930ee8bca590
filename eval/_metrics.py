"""Ranking and exposure metrics as pure numpy functions.

Conventions: ``recs`` is an ``(n_users, k)`` integer array of item indices in rank order,
padded with ``-1`` when a model returned fewer than ``k`` items; ``targets`` is a sequence
of integer arrays (the held-out relevant items per user). Accuracy metrics return one value
per user (average them, or slice first); exposure metrics return one number for the run.

* ``Recall@K``  = |top-K ∩ relevant| / |relevant|
* ``HitRate@K`` = 1 if top-K ∩ relevant is non-empty
* ``NDCG@K``    = DCG / IDCG with binary gains, DCG = Σ rel_i / log2(i + 1) (i = 1-based rank),
  IDCG from min(|relevant|, K) hits at the top
* ``MAP@K``     = Σ_i P@i · rel_i / min(|relevant|, K)
* catalogue coverage = distinct recommended items / catalogue size
* novelty = mean self-information −log2 p(i) of recommended items, p(i) = share of users
  who interacted with i in the fitting data (items nobody saw get p = 1 / (n_users + 1))
* Gini of impressions: Gini coefficient of the impression count of every catalogue item
  (0 = every item shown equally often, → 1 = all impressions on one item).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_precision_at_k",
    "catalogue_coverage",
    "gini",
    "hit_matrix",
    "hit_rate_at_k",
    "impressions",
    "ndcg_at_k",
    "novelty",
    "recall_at_k",
]


def hit_matrix(recs: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean ``(n_users, k)``: whether the item at each rank is relevant."""
    recs = np.asarray(recs)
    hits = np.zeros(recs.shape, dtype=bool)
    for u, relevant in enumerate(targets):
        if len(relevant):
            hits[u] = np.isin(recs[u], relevant) & (recs[u] >= 0)
    return hits


def _sizes(targets: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([len(np.unique(t)) for t in targets], dtype=np.float64)


def recall_at_k(hits: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    n = _sizes(targets)
    found = hits[:, :k].sum(axis=1)
    return np.divide(found, n, out=np.zeros_like(n), where=n > 0)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    h = hits[:, :k].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, h.shape[1] + 2))
    dcg = h @ discounts
    ideal_n = np.minimum(_sizes(targets), k).astype(int)
    cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = cum[ideal_n]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def average_precision_at_k(hits: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    h = hits[:, :k].astype(np.float64)
    precision = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)
    denom = np.minimum(_sizes(targets), k)
    num = (precision * h).sum(axis=1)
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def impressions(recs: np.ndarray, n_items: int) -> np.ndarray:
    """Impression count of every catalogue item (length ``n_items``)."""
    flat = np.asarray(recs).ravel()
    return np.bincount(flat[flat >= 0], minlength=n_items)


def catalogue_coverage(recs: np.ndarray, n_items: int) -> float:
    return float(np.count_nonzero(impressions(recs, n_items))) / n_items if n_items else 0.0


def novelty(recs: np.ndarray, item_users: np.ndarray, n_users: int) -> float:
    """Mean −log2 p(i) over recommended items; ``item_users[i]`` = users who saw item i."""
    flat = np.asarray(recs).ravel()
    flat = flat[flat >= 0]
    if flat.size == 0:
        return 0.0
    counts = np.asarray(item_users, dtype=np.float64)[flat]
    p = np.where(counts > 0, counts / n_users, 1.0 / (n_users + 1))
    return float(np.mean(-np.log2(p)))


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 equal, → 1 concentrated)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * total))
