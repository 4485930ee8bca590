"""Upper bounds for issue 17's targets in the simulator: the two-sided ranker with the latent
truth in place of its estimates.

    $(./dev env)/bin/python bench/marketplace_oracle.py [--seed 101] [--population 10x150]

One seed (a validation seed by default), the paired run of ``bench/marketplace.py`` (same
pre-period, same random numbers), the two-sided arm served with:

* ``estimate``: the reranker as served (the point picked on validation);
* ``oracle reciprocal``: the reciprocal estimate replaced by the latent P(candidate likes
  viewer) × the same reply chance (1 when the candidate already liked the viewer) — a perfect
  backward estimate, everything else as served;
* ``ideal``: the ``reciprocal`` step replaced by the latent match probability P(viewer likes
  candidate) × that backward term, with all steps (exposure, pacing, mmr, caps) and with only
  ``score → rules → reciprocal``: the best a myopic ranking could do, with and without the
  steps that spread attention;
* ``true reply chance`` (``--congestion``): the reply term replaced by the congestion-aware
  chance with each member's true capacity (regime capacity × capacity scale × activity) at the
  live like rate, ``rerank._market.reply_chance``;
* ``coverage β`` (``--congestion``): the ideal score × (1 + β · [candidate not matched this
  week]) from the simulator's own record: what favouring the members still unmatched can do
  for the weekly matched share.

Not a bench of the serving code: a diagnosis of what the simulator allows (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import marketplace as mk  # noqa: E402  (the bench script beside this one)

import opendisco.rerank._steps as rerank_steps  # noqa: E402
from opendisco.experiments import sim  # noqa: E402
from opendisco.rerank import RerankState  # noqa: E402
from opendisco.rerank._market import reply_chance  # noqa: E402
from opendisco.rerank._types import resort  # noqa: E402

TRUTH: dict[str, np.ndarray] = {}
MODE: dict[str, Any] = {"true_reply": False, "cover": 0.0}


def matched_this_week(pop: Any, market: Any, t: float) -> np.ndarray:
    """(n,) bool: members with a new match since the start of the run's current week."""
    start = 7 + 7 * ((int(t) - 7) // 7) if t >= 7 else 0
    out = np.zeros(pop.n, dtype=bool)
    for pairs, day in market._matches:
        if day >= start:
            out[pop.pair_viewer[pairs]] = True
            out[pop.pair_candidate[pairs]] = True
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--population", default="10x150")
    ap.add_argument(
        "--congestion", action="store_true", help="also the true reply chance and coverage arms"
    )
    args = ap.parse_args()
    markets, size = (int(x) for x in args.population.split("x"))
    cfg = sim.PopulationConfig(markets=markets, market_size=size)
    pop = sim.generate_population(cfg, seed=args.seed)
    try:
        val = json.loads(mk.VALIDATION.read_text())
        point = val["picked"]
    except FileNotFoundError:
        point = {}  # the serving defaults
    serve, estimate, reciprocal = mk.serve, rerank_steps.reciprocal_estimate, None

    def recorded(pop_, market, live, arm, reranker, v, pairs, k, t):  # type: ignore[no-untyped-def]
        TRUTH["fwd"] = pop.p_like[pairs]
        TRUTH["back"] = pop.p_like[pop.reverse[pairs]]
        TRUTH["liked"] = market.liked[pop.reverse[pairs]]
        cand = pop.pair_candidate[pairs]
        TRUTH["rate"] = live.like_rate(cand, t)
        regime = sim.REGIMES["balanced"]
        TRUTH["capacity"] = regime.capacity * pop.capacity_scale[cand] * pop.activity[cand]
        TRUTH["matched"] = matched_this_week(pop, market, t)[cand]
        return serve(pop_, market, live, arm, reranker, v, pairs, k, t)

    def backward(features: Any, cfg: Any) -> np.ndarray:
        if MODE["true_reply"]:
            reply = reply_chance(TRUTH["rate"], TRUTH["capacity"])
        else:
            reply = np.minimum(
                1.0, (cfg.inbound_capacity + 1.0) / (np.maximum(features.inbound, 0) + 1.0)
            )
        return np.where(TRUTH["liked"], 1.0, TRUTH["back"] * reply)

    def oracle_estimate(features: Any, ctx: Any, cfg: Any, n: int) -> np.ndarray:
        return backward(features, cfg)

    def ideal_step(s: Any, inp: Any, cfg: Any) -> Any:
        scores = TRUTH["fwd"] * backward(inp.features, cfg)
        if MODE["cover"]:
            scores = scores * (1.0 + MODE["cover"] * ~TRUTH["matched"])
        return RerankState(scores, resort(scores, s.order))

    mk.serve = recorded
    bare = {**point, "steps": ["score", "rules", "reciprocal"]}
    variants = [
        ("estimate", point, None, None),
        ("oracle reciprocal", point, oracle_estimate, None),
        ("ideal, all steps", point, None, ideal_step),
        ("ideal, score/rules/reciprocal", bare, None, ideal_step),
    ]  # fmt: skip
    # (name, point, estimate, step, true reply chance, coverage β)
    variants = [(*v, False, 0.0) for v in variants]
    if args.congestion:
        variants += [
            ("oracle reciprocal, true reply chance", point, oracle_estimate, None, True, 0.0),
            ("ideal, true reply chance, all steps", point, None, ideal_step, True, 0.0),
            ("ideal, true reply chance, s/r/r", bare, None, ideal_step, True, 0.0),
            ("coverage 3, all steps", point, None, ideal_step, True, 3.0),
            ("coverage 3, s/r/r", bare, None, ideal_step, True, 3.0),
            ("coverage 10, s/r/r", bare, None, ideal_step, True, 10.0),
        ]  # fmt: skip
    print(f"seed {args.seed}, {args.population}, point {point}")
    for name, p, est, step, true_reply, cover in variants:
        MODE.update(true_reply=true_reply, cover=cover)
        rerank_steps.reciprocal_estimate = est or estimate
        reciprocal = rerank_steps.STEPS["reciprocal"]
        if step is not None:
            rerank_steps.STEPS["reciprocal"] = step
        try:
            r = mk.one_run(pop, args.seed, mk.arms_for([dict(p)]), sim.REGIMES["balanced"])
        finally:
            rerank_steps.STEPS["reciprocal"] = reciprocal
        b, t = r["one-sided"], r["two-sided"]
        print(
            f"  {name}: mutual likes / 1,000 ×"
            f"{t['mutual_likes_per_1000'] / b['mutual_likes_per_1000']:.3f}, matched / week ×"
            f"{t['match_share_per_week'] / b['match_share_per_week']:.3f}, Gini "
            f"{t['inbound_gini'] - b['inbound_gini']:+.3f}, top-1% ×"
            f"{t['inbound_top1_share'] / b['inbound_top1_share']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
