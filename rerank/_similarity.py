"""EASE item–item weights as the rows of :class:`~opendisco.signals.ItemSimilarity`.

EASE (Steck 2019) fits ``B = I − P·diag(1/diag(P))``, ``P = (XᵀX + λI)⁻¹``, ``diag(B) = 0``
on a member × item matrix of positives; a member's score for item ``c`` is
``Σ_{h ∈ history} B[h, c]``. On MovieLens it is the strongest single collaborative signal, and
it is cheap to serve as a feature: each item keeps its ``top_n`` largest weights, and a request
sums the rows of the member's recent positives (the graph feature's read pattern). Only the
``max_items`` most popular items are modelled (the dense inverse is ``max_items²``).

The matrix must hold the *fitting period only* (the trainer's positives before the period it
will be judged on); ``lam`` is picked on validation by the caller.

:func:`recency_scales` weights those rows by the positives' recency for the
``item_sim_recent`` feature: on MovieLens members rate in sessions, so the latest few
positives predict the next ones better than the whole history (validation split of
ml-latest-small, EASE over the latest 50 positives, top-100 rows: NDCG@10 0.0840 flat, 0.0937
with a half-life of 5 positives).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["ease_neighbours", "recency_scales"]


def ease_neighbours(
    matrix: sp.spmatrix,
    item_ids: Sequence[str],
    *,
    lam: float,
    max_items: int = 3000,
    top_n: int = 100,
) -> dict[str, dict[str, float]]:
    """Pure: ``{item: {neighbour: B[item, neighbour]}}``, each row's ``top_n`` largest positive
    weights, for the ``max_items`` items with the most positives in ``matrix`` (members ×
    items, columns named by ``item_ids``)."""
    X = sp.csr_matrix(matrix, dtype=np.float64)
    X.data[:] = 1.0
    counts = np.asarray(X.sum(axis=0)).ravel()
    cols = np.flatnonzero(counts > 0)
    if cols.size > max_items:
        cols = cols[np.argsort(-counts[cols], kind="stable")[:max_items]]
    cols = np.sort(cols)
    if cols.size < 2:
        return {}
    Xc = X[:, cols]
    g = (Xc.T @ Xc).toarray()
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    n = min(top_n, cols.size - 1)
    top = np.argpartition(-b, n - 1, axis=1)[:, :n]
    out: dict[str, dict[str, float]] = {}
    for r, src in enumerate(cols):
        row = {str(item_ids[cols[j]]): round(float(b[r, j]), 6) for j in top[r] if b[r, j] > 0}
        if row:
            out[str(item_ids[src])] = row
    return out


def recency_scales(n: int, half_life: float) -> list[float]:
    """Pure: the weight of each of ``n`` positives, most recent first: ``0.5^(i / half_life)``
    for the i-th (0-based)."""
    if half_life <= 0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    return [0.5 ** (i / half_life) for i in range(n)]
