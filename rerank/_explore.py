"""Exploration: a randomised ranking with known per-slot propensities (Plackett–Luce).

An explored answer keeps the reranker's order as a *pool* (its first ``pool`` rows) and
draws the shown page from it by Plackett–Luce sampling without replacement: the item at pool
rank ``r`` has weight ``(1 + r) ** -sharpness`` (rank-based, so the randomisation means the
same whatever scale a scorer's scores have; ``sharpness`` 0 = uniform over the pool, large =
almost the deterministic order). The probability of slot ``j`` given slots ``< j`` is
``w[pick_j] / sum(w of the rows not yet picked)``; their running product is the probability
of the shown prefix, and :func:`pl_marginals` gives the probability that a row lands at a slot
(what the independent/item-position off-policy estimators divide by).

Pure functions over arrays; the random generator is passed in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pl_marginals", "pl_sample", "pl_weights"]


def pl_weights(n: int, sharpness: float = 1.0) -> np.ndarray:
    """Plackett–Luce weights of pool ranks ``0..n-1``: ``(1 + r) ** -sharpness``."""
    return (1.0 + np.arange(n, dtype=np.float64)) ** -float(sharpness)


def pl_sample(
    weights: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(picks, propensity)``: ``k`` pool positions drawn without replacement with
    probability proportional to ``weights`` (Gumbel top-k), and the conditional probability of
    each slot's pick given the earlier slots."""
    w = np.asarray(weights, dtype=np.float64)
    k = min(k, w.shape[0])
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    keys = np.log(w) + rng.gumbel(size=w.shape[0])
    picks = np.argsort(-keys, kind="stable")[:k]
    taken = np.cumsum(np.concatenate([[0.0], w[picks][:-1]]))
    return picks.astype(np.int64), w[picks] / (w.sum() - taken)


def pl_marginals(
    weights: np.ndarray, k: int, *, samples: int = 4000, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``(n, k)``: probability that pool position ``i`` is shown at slot ``j`` (Monte Carlo
    over ``samples`` draws; exact for slot 0)."""
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    k = min(k, n)
    rng = rng or np.random.default_rng(0)
    keys = np.log(w)[None, :] + rng.gumbel(size=(samples, n))
    top = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    out = np.zeros((n, k))
    for j in range(k):
        out[:, j] = np.bincount(top[:, j], minlength=n) / samples
    if k:
        out[:, 0] = w / w.sum()
    return out
