"""Where the matches get lost in the simulated marketplace (issue 17's diagnosis).

    $(./dev env)/bin/python bench/marketplace_diagnose.py [--seed 101] [--population 10x150]

One seed (a validation seed by default), the pre-period under the one-sided ranker, then 14
days of each arm of ``bench/marketplace.py`` with the point it picked
(``bench/results/marketplace-validation.json``, else its first grid point). Prints, per arm:

* the fate of every like (proposal) by the receiver's latent attractiveness (top 1%, next
  9%, rest): reciprocated at once (the receiver had already liked the proposer), reciprocated
  on review, declined on review, or expired unreviewed (the receiver's reply capacity);
* the controller's budget per day;
* how well the reciprocal estimate (the feature column the reranker computes) ranks the
  simulator's latent truth P(candidate likes viewer): the mean within-list Spearman
  correlation (what ranking needs), the pooled AUC against outcomes drawn from the truth (the
  oracle's AUC beside it), by the candidate's history (likes + passes given), and the same
  correlation for the estimate's parts and for the latent terms (pickiness, true taste
  match) — the ceiling each part could reach.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import marketplace as mk  # noqa: E402  (the bench script beside this one)

from opendisco.experiments import sim  # noqa: E402
from opendisco.rerank import FEATURE_NAMES, Reranker  # noqa: E402

REC = FEATURE_NAMES.index("reciprocal")


class Recording(Reranker):
    """The real reranker, keeping its last result (the feature matrix) for the diagnosis."""

    last: Any = None

    def run(self, *a: Any, **kw: Any) -> Any:
        self.last = super().run(*a, **kw)
        return self.last


def auc(score: np.ndarray, y: np.ndarray) -> float:
    r = rankdata(score)
    n1 = int(y.sum())
    n0 = y.shape[0] - n1
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / max(n1 * n0, 1))


def fates(out: sim.Outcomes, pop: sim.Population, groups: dict[str, np.ndarray]) -> dict:
    recv = pop.pair_candidate[out.imp_pair[out.prop_imp]]
    imp_recv = pop.pair_candidate[out.imp_pair]
    res = {}
    for name, mask in groups.items():
        sel = mask[recv]
        st, inst = out.prop_status[sel], out.prop_instant[sel]
        n = max(int(sel.sum()), 1)
        res[name] = {
            "impressions": int(mask[imp_recv].sum()),
            "likes": int(sel.sum()),
            "instant": round(float(inst.sum()) / n, 3),
            "reviewed_back": round(float(((st == 1) & ~inst).sum()) / n, 3),
            "declined": round(float((st == 2).sum()) / n, 3),
            "expired": round(float((st == 3).sum()) / n, 3),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--population", default="10x150")
    args = ap.parse_args()
    markets, size = (int(x) for x in args.population.split("x"))
    pop = sim.generate_population(
        sim.PopulationConfig(markets=markets, market_size=size), args.seed
    )
    regime = sim.REGIMES["balanced"]
    try:
        val = json.loads(mk.VALIDATION.read_text())
        point = val["picked"]
    except FileNotFoundError:
        point = {}  # the serving defaults
    rows: list[tuple[np.ndarray, ...]] = []
    within: dict[str, list[float]] = {}
    serve = mk.serve

    def recorded(pop_, market, live, arm, reranker, v, pairs, k, t):  # type: ignore[no-untyped-def]
        top = serve(pop_, market, live, arm, reranker, v, pairs, k, t)
        if not arm.two_sided:
            return top
        b = reranker.last.trace.X[:, REC]
        known = market.liked[pop.reverse[pairs]]  # the candidate already liked the viewer
        cand = pop.pair_candidate[pairs]
        truth = pop.p_like[pop.reverse[pairs]]
        hist = live.likes_sent[cand] + live.passes_sent[cand]
        rows.append((b[~known], truth[~known], hist[~known]))
        if (~known).sum() > 5:
            c = cand[~known]
            ls, ps = live.likes_sent[c], live.passes_sent[c]
            taste = live.acc[c] / np.maximum(
                np.linalg.norm(live.acc[c], axis=1, keepdims=True), 1e-9
            )
            parts = {
                "estimate": b[~known],
                "like rate part": (ls + 3.0) / (ls + ps + 10.0),
                "taste part (estimated taste . profile)": taste @ pop.content[v],
                "latent: -pickiness": -pop.pickiness[c],
                "latent: true taste . traits": pop.taste[c] @ pop.traits[v],
            }
            for name, x in parts.items():
                within.setdefault(name, []).append(float(spearmanr(x, truth[~known])[0]))
        return top

    mk.serve = recorded
    mk.Reranker = Recording
    arms = mk.arms_for([dict(point)])
    market = sim.Market(
        pop, args.seed, regime.capacity, regime.expiry_days, regime.instant_matches,
        regime.message_rate, regime.reply_rate,
    )  # fmt: skip
    live = mk.Live.initial(pop)
    mk.play(pop, market, live, arms[0], range(regime.warmup_days), 2, controllers=arms[1:])
    att = pop.attractiveness
    q99, q90 = np.quantile(att, 0.99), np.quantile(att, 0.9)
    groups = {"top 1%": att >= q99, "next 9%": (att >= q90) & (att < q99), "rest": att < q90}
    groups["all"] = np.ones(pop.n, dtype=bool)
    print(f"seed {args.seed}, {args.population}, point {point}")
    print(f"mean eligible pool {pop.pool_sizes().mean():.1f}; seen after the pre-period "
          f"{market.seen.mean():.3f}")  # fmt: skip
    days = range(regime.warmup_days, regime.warmup_days + regime.days)
    for arm in arms:
        m = market.copy()
        m.seed = args.seed
        m.start_log(regime.warmup_days)
        lv = live.copy()
        lv.pacing = live.controllers.get(arm.name)
        mk.play(pop, m, lv, arm, days, 2)
        out = m.outcomes()
        summary = {k: round(v, 4) for k, v in sim.summary(out, pop).items()}
        print(f"\n{arm.name}: {json.dumps(summary)}")
        print(f"  like rate per impression {out.imp_liked.mean():.3f}; seen at the end "
              f"{m.seen.mean():.3f}; budgets {[round(b, 2) for b in lv.budgets]}")  # fmt: skip
        for g, f in fates(out, pop, groups).items():
            print(f"  likes to {g}: {f}")
    b, truth, hist = (np.concatenate(x) for x in zip(*rows, strict=True))
    y = np.random.default_rng(0).random(truth.shape[0]) < truth
    print("\nreciprocal estimate vs the latent P(candidate likes viewer), two-sided arm:")
    for name, xs in within.items():
        print(f"  within-list Spearman, {name}: {np.nanmean(xs):.3f}")
    print(f"  pooled AUC {auc(b, y):.3f} (oracle {auc(truth, y):.3f})")
    for lo, hi in ((0, 3), (3, 10), (10, np.inf)):
        sel = (hist >= lo) & (hist < hi)
        if sel.sum() > 100:
            print(f"  history [{lo}, {hi}): n={int(sel.sum())} AUC {auc(b[sel], y[sel]):.3f} "
                  f"(oracle {auc(truth[sel], y[sel]):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
