"""Request-time behavioural user vector: one implicit-ALS user solve (fold-in).

A user's behaviour vector exists the moment they act, without retraining: it is solved from
the behaviour vectors (ALS item factors, written by ``opendisco train``) of the items they
engaged with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["fold_in"]


def fold_in(
    item_factors: np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    regularization: float = 0.1,
    alpha: float = 1.0,
    gram: np.ndarray | None = None,
) -> np.ndarray | None:
    """One implicit-ALS user solve from the factors of the items the user engaged with.

    ``(YᵀY + Y_rᵀ(C_r − I)Y_r + λI) u = Y_rᵀ C_r 1`` with confidence ``c = 1 + alpha·w``; without
    ``gram`` (the model's YᵀY) the unobserved-items term is left out. Rows of zeros (items
    without a behaviour vector) are dropped; returns None when nothing is left.
    """
    Y = np.asarray(item_factors, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] == 0:
        return None
    w = np.ones(Y.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = (np.abs(Y).sum(axis=1) > 0) & (w > 0)
    if not keep.any():
        return None
    Y, c = Y[keep], 1.0 + alpha * w[keep]
    f = Y.shape[1]
    base = gram if gram is not None else np.zeros((f, f))
    extra = (c - 1.0) if gram is not None else c
    A = base + (Y * extra[:, None]).T @ Y + regularization * np.eye(f)
    b = Y.T @ c
    return np.linalg.solve(A, b)
