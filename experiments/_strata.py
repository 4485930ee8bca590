"""Stratified randomisation of clusters and switchback regions on their pre-period.

With a dozen informative units (the cities of a market), Bernoulli assignment leaves the
variance estimator conservative by Neyman's heterogeneity term — the units' effects differ,
and each unit shows one arm only. In the simulated marketplace a city's effect follows its
pre-period mutual-like rate (correlation 0.85 across the 12 cities), so units of similar
size and pre-period rate are grouped into strata of ``per`` units and each stratum is split
between the arms *completely* (exactly its share of units per arm). The variance estimator
then centres each unit on its stratum × arm cell (:func:`~._analysis._cr2`) and is
conservative only by the effect differences within strata (Imbens & Rubin 2015, ch. 9);
the differences between strata, which the pre-period predicts, no longer count. Pairs
would not do that: a pair's estimator cannot see within-pair differences and falls back on
the spread of the pair effects, which similar pairs do not shrink.

Both parts are pure functions:

* :func:`strata_of` — the strata from what is known at the snapshot: units ordered by size
  class (⌊log₂(pre-period impressions + 1)⌋, largest first) and then pre-period outcome
  rate, cut into consecutive groups of ``per`` (a short last group joins the one before),
  so units of one stratum have similar size and rate.
* :func:`~._assign.stratified_arms` — the arms: within each stratum, the units in the order of
  SHA-256(salt ‖ unit) (a seeded permutation), and the i-th of n gets the arm whose
  cumulative-weight range holds (i + o) / n, o = bucket(salt ‖ stratum) / 10⁴ (systematic
  sampling): each arm gets its share of every stratum to within one unit, and each unit's
  marginal probability of an arm is exactly that arm's weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._assign import stratified_arms

__all__ = ["strata_of", "stratified_arms"]


def strata_of(units: Sequence[str], size: np.ndarray, rate: np.ndarray, per: int) -> np.ndarray:
    """Stratum index (0, 1, …) of each unit: ordered by size class, largest first, then
    pre-period rate (ties by unit id), cut into groups of ``per``; a last group shorter than
    ``per`` joins the previous one (fewer than ``per`` units: one stratum)."""
    if per < 2:
        raise ValueError("strata need at least two units")
    size = np.asarray(size, dtype=float)
    rate = np.asarray(rate, dtype=float)
    size_class = np.floor(np.log2(np.maximum(size, 0.0) + 1.0))
    order = sorted(range(len(units)), key=lambda i: (-size_class[i], rate[i], units[i]))
    n_strata = max(len(units) // per, 1)
    out = np.empty(len(units), dtype=np.int64)
    for pos, i in enumerate(order):
        out[i] = min(pos // per, n_strata - 1)
    return out
