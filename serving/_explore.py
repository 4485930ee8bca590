"""Exploration in serving: a share of personal answers gets a randomised, logged ranking.

With probability ``rate`` a request of a member on ``for_you``/``cold_start`` (not pinned,
not explained) is *explored*: its page is drawn from the first ``ceil(pool_factor * k)`` rows
of the reranker's order by Plackett–Luce sampling (:func:`opendisco.rerank.pl_sample`, weights
``(1 + rank) ** -sharpness``). Only rows the reranker kept are in the pool, so every hard rule
still holds; per-page diversity caps may be looser on an explored page. The per-slot
propensities, the pool and its weights go into the served-list log, where ``opendisco eval
offpolicy`` reads them. The deterministic answer is the same policy with propensity 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opendisco._domain import Surface
from opendisco._settings import Settings
from opendisco.rerank import pl_sample, pl_weights

__all__ = ["EXPLORED_SURFACES", "Exploration", "Explorer"]

#: surfaces whose answers may be explored (personal lists; trending is the same for everyone)
EXPLORED_SURFACES = frozenset({Surface.for_you.value, Surface.cold_start.value})


@dataclass(frozen=True)
class Exploration:
    shown: np.ndarray  # batch rows, in the order shown
    propensity: np.ndarray  # per slot, given the slots before
    pool: np.ndarray  # batch rows the page was drawn from, in reranked order
    weights: np.ndarray  # Plackett–Luce weight of each pool row
    policy: dict[str, Any]


@dataclass
class Explorer:
    rate: float = 0.0
    pool_factor: float = 2.0
    sharpness: float = 1.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    @classmethod
    def from_settings(cls, settings: Settings, seed: int | None = None) -> Explorer:
        return cls(
            settings.explore_rate,
            settings.explore_pool_factor,
            settings.explore_sharpness,
            np.random.default_rng(seed),
        )

    def policy(self, pool: int) -> dict[str, Any]:
        return {
            "kind": "plackett_luce",
            "rate": self.rate,
            "pool": pool,
            "pool_factor": self.pool_factor,
            "sharpness": self.sharpness,
        }

    def explores(self) -> bool:
        """The request's coin: whether its answer is explored."""
        return self.rate > 0.0 and self.rng.random() < self.rate

    def sample(self, order: np.ndarray, k: int) -> Exploration | None:
        """A page of ``k`` rows drawn from the top of ``order`` (None: too few rows to draw)."""
        pool = order[: min(order.shape[0], math.ceil(self.pool_factor * k))]
        if pool.shape[0] < 2:
            return None
        weights = pl_weights(pool.shape[0], self.sharpness)
        picks, propensity = pl_sample(weights, k, self.rng)
        return Exploration(pool[picks], propensity, pool, weights, self.policy(pool.shape[0]))
