"""opendisco.experiments.sim: a seeded two-sided marketplace served by the real reranker.

Members are both viewers and candidates, with latent two-sided preferences, the product's
two-sided eligibility, finite attention (impressions per session) and finite reply capacity.
Build a population, put it in a market regime (its pre-period runs under the control
ranker), then run worlds under an assignment; the same run seed gives every world the same
random numbers, so all-treated minus all-control is the true global treatment effect::

    from opendisco.experiments import sim
    from opendisco.rerank import merged_config

    pop = sim.generate_population(sim.PopulationConfig(markets=40), seed=1)
    world = sim.World(pop, sim.REGIMES["balanced"], sim.Ranker(name="control"), seed=1)
    boost = sim.Ranker(merged_config({"weights": {"popularity": 1.5}}), name="boost")
    treated = world.run(boost, sim.Assignment.everyone(pop.n), seed=7)
    control = world.run(boost, sim.Assignment.nobody(pop.n), seed=7)
    gte = sim.mutual_likes_per_1000(treated) - sim.mutual_likes_per_1000(control)

Parts (each documented in its module):

* :func:`generate_population` / :class:`Population` — members, eligibility, preferences;
* :func:`serve` — one request through :class:`~opendisco.rerank.Reranker` on a
  :class:`~opendisco.rerank.CandidateBatch` and :class:`~opendisco.rerank.Features` built
  from the simulated state; :class:`Ranker` is a ``RerankConfig`` (+ scorer);
* :class:`Market` — the market step (sessions, likes, reviews with capacity, matches,
  messages, replies) and its :class:`Outcomes`;
* :class:`World` — pre-period, static (fast) and dynamic (every session served) runs;
  :data:`REGIMES` from demand- to supply-constrained plus the no-interference control;
* metrics: :func:`mutual_likes_per_1000`, :func:`match_share_per_week`, :func:`gini` and
  :func:`top_share` of :func:`inbound_attention`, :func:`summary`.
"""

from ._market import Market, Outcomes
from ._metrics import (
    gini,
    inbound_attention,
    match_share_per_week,
    mutual_likes_per_1000,
    summary,
    top_share,
)
from ._population import Population, PopulationConfig, generate_population
from ._ranking import Observed, PairScores, Ranker, merged_order, pair_scores, serve
from ._rng import Stream, uniform
from ._world import REGIMES, Assignment, MarketConfig, World

__all__ = [
    "REGIMES",
    "Assignment",
    "Market",
    "MarketConfig",
    "Observed",
    "Outcomes",
    "PairScores",
    "Population",
    "PopulationConfig",
    "Ranker",
    "Stream",
    "World",
    "generate_population",
    "gini",
    "inbound_attention",
    "match_share_per_week",
    "merged_order",
    "mutual_likes_per_1000",
    "pair_scores",
    "serve",
    "summary",
    "top_share",
    "uniform",
]
