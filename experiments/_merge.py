"""Pair-level treatment inside one ranked list: counterfactual rank merging.

In a two-sided (or candidate-side) experiment one list holds treated and control candidates.
Mixing the two arms' *scores* in one sort lets treated candidates take control candidates'
slots (or the reverse): every candidate's exposure then depends on the other candidates'
arms, and candidate-side comparisons measure that competition, not the treatment. Instead the
list is ranked twice — once entirely by the control arm, once entirely by the treatment arm
(the real reranker, all its steps, both times) — and each candidate takes the position its
*own* arm's ranking gives it; collisions are settled by a per-candidate coin. A candidate is
then shown about where it would be shown if everyone were in its arm (UniCoRn, "unifying
counterfactual rankings": Nandy, Venugopalan, Lo & Chatterjee, NeurIPS 2021).
"""

from __future__ import annotations

import numpy as np

__all__ = ["merge_ranks"]


def merge_ranks(
    control_order: np.ndarray, treated_order: np.ndarray, treated: np.ndarray, tie: np.ndarray
) -> np.ndarray:
    """Rows (of one batch of ``n``) best first: row ``i`` ranks at its position in
    ``treated_order`` if ``treated[i]`` else in ``control_order``; rows missing from their
    arm's order (dropped by a rule) are dropped; equal positions go by ``tie`` (in [0, 1))."""
    n = treated.shape[0]
    rank_c = np.full(n, np.inf)
    rank_c[control_order] = np.arange(control_order.shape[0])
    rank_t = np.full(n, np.inf)
    rank_t[treated_order] = np.arange(treated_order.shape[0])
    rank = np.where(treated, rank_t, rank_c)
    rows = np.flatnonzero(np.isfinite(rank))
    return rows[np.lexsort((tie[rows], rank[rows]))]
