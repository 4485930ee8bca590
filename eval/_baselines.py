"""Standard recommenders fitted on the same split: random, most-popular, EASE, implicit ALS.

All of them score a batch of users as a dense ``(batch, n_items)`` matrix and share one
top-k selection (:func:`top_k`) that removes excluded items, so they differ only in scores.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from ._split import Stage

__all__ = ["ALS", "EASE", "MostPopular", "RandomRecommender", "ScoringRecommender", "top_k"]


def top_k(scores: np.ndarray, k: int, exclude: Sequence[Iterable[int]]) -> np.ndarray:
    """Indices of the ``k`` best scores per row (descending), excluded columns removed.

    Ties are broken by the lower item index (deterministic). Rows with fewer than ``k``
    admissible items (score ``-inf``) are padded with ``-1``.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    for row, cols in enumerate(exclude):
        cols = np.fromiter(cols, dtype=np.int64)
        if cols.size:
            scores[row, cols] = -np.inf
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    best = np.take_along_axis(part, order, axis=1)
    best_scores = np.take_along_axis(part_scores, order, axis=1)
    best[~np.isfinite(best_scores)] = -1
    if k_eff < k:
        best = np.pad(best, ((0, 0), (0, k - k_eff)), constant_values=-1)
    return best


class ScoringRecommender:
    """Base: fitted on a :class:`Stage`, implements the ``Recommender`` protocol."""

    name = "scoring"

    def __init__(self) -> None:
        self._stage: Stage | None = None

    def fit(self, stage: Stage) -> ScoringRecommender:
        self._stage = stage
        self._fit(stage.matrix)
        return self

    def _fit(self, matrix: sp.csr_matrix) -> None:
        raise NotImplementedError

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Dense scores ``(len(users), n_items)`` for user indices."""
        raise NotImplementedError

    @property
    def stage(self) -> Stage:
        if self._stage is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        return self._stage

    def recommend_batch(
        self, user_ids: Sequence[str], k: int, exclude: Sequence[Collection[str]]
    ) -> list[list[str]]:
        stage = self.stage
        idx = np.array([stage.user_index.get(u, -1) for u in user_ids], dtype=np.int64)
        scores = np.zeros((len(user_ids), len(stage.items)))
        known = idx >= 0
        if known.any():
            scores[known] = self.scores(idx[known])
        if (~known).any():  # users unseen at fit time get the popularity ranking
            scores[~known] = stage.item_counts
        item_index = stage.item_index
        excl = [[item_index[i] for i in ex if i in item_index] for ex in exclude]
        best = top_k(scores, k, excl)
        return [[stage.items[i] for i in row if i >= 0] for row in best]


class RandomRecommender(ScoringRecommender):
    """Uniformly random items (a floor every model must beat)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._rng = np.random.default_rng(seed)

    def _fit(self, matrix: sp.csr_matrix) -> None:
        self._n_items = matrix.shape[1]

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self._rng.random((len(users), self._n_items))


class MostPopular(ScoringRecommender):
    """Items ranked by number of fitting interactions (same list for everyone)."""

    name = "most-popular"

    def _fit(self, matrix: sp.csr_matrix) -> None:
        self._pop = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._pop, (len(users), self._pop.size))


class EASE(ScoringRecommender):
    """EASE (Steck 2019): closed form B = I − P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹, diag(B)=0.

    To keep the dense inverse affordable only the ``max_items`` most popular items (by fitting
    interactions) are modelled; other items score 0 (below every modelled item).
    """

    name = "EASE"

    def __init__(self, lam: float = 500.0, max_items: int = 3000) -> None:
        super().__init__()
        self.lam = lam
        self.max_items = max_items

    def _fit(self, matrix: sp.csr_matrix) -> None:
        counts = np.asarray(matrix.sum(axis=0)).ravel()
        cols = np.flatnonzero(counts > 0)
        if cols.size > self.max_items:
            cols = cols[np.argsort(-counts[cols], kind="stable")[: self.max_items]]
        self._cols = np.sort(cols)
        self._x = matrix[:, self._cols].tocsr().astype(np.float64)
        self._gram = (self._x.T @ self._x).toarray()
        self._solve()

    def _solve(self) -> None:
        g = self._gram.copy()
        g[np.diag_indices_from(g)] += self.lam
        p = np.linalg.inv(g)
        b = p / (-np.diag(p))
        b[np.diag_indices_from(b)] = 0.0
        self._b = b

    def with_lambda(self, lam: float) -> EASE:
        """Re-solve for another λ reusing the Gram matrix (for tuning)."""
        self.lam = lam
        self._solve()
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), self.stage.matrix.shape[1]), -1e-9)
        out[:, self._cols] = self._x[users] @ self._b
        return out


class ALS(ScoringRecommender):
    """Implicit-feedback ALS from the ``implicit`` package (CPU, BLAS pinned to one thread)."""

    name = "ALS"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed

    def _fit(self, matrix: sp.csr_matrix) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=2,
            )
            model.fit(matrix.astype(np.float32), show_progress=False)
        self._users = np.asarray(model.user_factors)
        self._items = np.asarray(model.item_factors)

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self._users[users] @ self._items.T
