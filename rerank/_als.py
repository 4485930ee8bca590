"""Behavioural item vectors: implicit ALS training and request-time fold-in.

``train_als`` fits item/user factors on positive interactions (implicit, CPU); ``fold_in``
solves one user's factor from the factors of items they engaged with, so a user vector exists
the moment they act, without retraining. ``opendisco train`` stores the item factors with
``opendisco.ingest.publish_behaviour`` in a collection of our own (never in the app's items);
sync carries them into OpenSearch (the content embedding is never recomputed: its text did
not change).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

from opendisco.signals import fold_in

__all__ = ["AlsModel", "fold_in", "train_als"]


@dataclass(frozen=True)
class AlsModel:
    item_ids: list[str]
    user_ids: list[str]
    item_factors: np.ndarray  # (n_items, f)
    user_factors: np.ndarray  # (n_users, f)
    regularization: float

    def gram(self) -> np.ndarray:
        return self.item_factors.T @ self.item_factors

    def vectors(self, min_norm: float = 1e-6) -> dict[str, list[float]]:
        """Item id → factor list, skipping (near-)zero rows (cosine k-NN rejects them)."""
        norms = np.linalg.norm(self.item_factors, axis=1)
        return {
            i: self.item_factors[r].astype(float).tolist()
            for r, i in enumerate(self.item_ids)
            if norms[r] > min_norm
        }


def train_als(
    interactions: Iterable[tuple[str, str, float]],
    *,
    factors: int = 32,
    iterations: int = 15,
    regularization: float = 0.05,
    alpha: float = 10.0,
    seed: int = 0,
) -> AlsModel:
    """Fit implicit ALS on ``(user_id, item_id, weight)`` positives (weights summed per pair)."""
    import implicit

    users: dict[str, int] = {}
    items: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for u, i, w in interactions:
        rows.append(users.setdefault(u, len(users)))
        cols.append(items.setdefault(i, len(items)))
        vals.append(float(w))
    if not vals:
        raise ValueError("no interactions to train on")
    ui = csr_matrix(
        (np.asarray(vals, dtype=np.float32) * alpha, (rows, cols)),
        shape=(len(users), len(items)),
    )
    ui.sum_duplicates()
    from threadpoolctl import threadpool_limits

    # implicit warns (→ error in tests) when BLAS threads would oversubscribe its own
    with threadpool_limits(1, "blas"):
        model = implicit.cpu.als.AlternatingLeastSquares(
            factors=factors,
            iterations=iterations,
            regularization=regularization,
            random_state=seed,
            calculate_training_loss=False,
            num_threads=1,
        )
        model.fit(ui, show_progress=False)
    return AlsModel(
        item_ids=list(items),
        user_ids=list(users),
        item_factors=np.asarray(model.item_factors, dtype=np.float64),
        user_factors=np.asarray(model.user_factors, dtype=np.float64),
        regularization=regularization,
    )
