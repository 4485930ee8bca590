"""Experiment designs in the simulated marketplace: bias, SE and coverage against the truth.

For each scenario (a market regime of :mod:`opendisco.experiments.sim`) and each design
(user, item, two_sided, cluster, switchback; and cluster and switchback randomised within
strata of 4 units of similar pre-period size and rate: rows ``… strata=4``), R replications
of the same experiment — a popularity boost in the real reranker
(``rerank.weights.popularity`` 0.05 → 2.0) — each with its own salt and its own random
numbers, assigned by the served assignment functions (SHA-256 buckets), run in the
simulator and read by the served analysis (``opendisco.experiments.analyze``). The truth
is the global treatment effect: all-treated minus all-control worlds with common random
numbers, averaged over seeds.

Scenarios: ``no_interference`` (independent exposure, no capacity: SUTVA holds, every
design must be unbiased), ``balanced`` (binding reply capacity: the naive member-level
design must be biased, the interference-aware designs not), ``aa`` (the balanced world, both
arms the control: false-positive rate), and with ``--regimes`` the demand- and
supply-constrained markets.

Per scenario × design: relative bias (with its Monte Carlo SE), empirical SD of the
estimates, mean estimated SE, SE/SD, 95% CI coverage of the truth, RMSE, and the share of
readouts the SRM gate blocked. Also: arm shares at 1M ids and the SRM false-alarm rate of
the assignment check over many salts. Writes bench/results/experiments.json.

    python bench/experiments.py --quick        # small population, R=60: validates the script
    python bench/experiments.py                # R=1000 (A/A R=2000); see bench/README.md
    python bench/experiments.py --regimes      # + demand/supply-constrained rows (R=200)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opendisco.experiments import (
    Experiment,
    SwitchbackPlan,
    TwoSidedPlan,
    analyze,
    sim,
    switchback_plan,
    two_sided_plan,
)
from opendisco.experiments._analysis import srm_check
from opendisco.experiments._assign import arm_indices
from opendisco.experiments._metrics import METRICS
from opendisco.experiments._simulate import (
    carry_over_days,
    covariates,
    pre_period_balance,
    pre_period_clusters,
    pre_period_strata,
    simulate,
)
from opendisco.experiments._twosided import tsri_family
from opendisco.rerank import merged_config

#: fixed design settings; the two-sided allocation and β and the switchback period and
#: burn-in are set per world from its pre-period (:class:`Plan`)
DESIGNS: dict[str, dict[str, Any]] = {
    "user": {},
    "item": {},
    "two_sided": {},
    "cluster": {},
    "switchback": {},
    # randomised completely within strata of 4 units of similar pre-period size and
    # mutual-like rate (opendisco.experiments._strata), read with the stratified CR2
    "cluster strata=4": {"kind": "cluster", "strata": 4},
    "switchback strata=4": {"kind": "switchback", "strata": 4},
}
#: the two-sided replications are also read by Johari et al.'s TSRI-k (same data, same
#: bootstrap seed): rows ``two_sided k=1`` and ``two_sided k=2``
TSRI_K = (1.0, 2.0)
BOOST = {"weights": {"popularity": 2.0}}
#: the simulator's control ranker, pinned: the reranker settings every table below was measured
#: with (the serving defaults before issue 17 moved them to the marketplace bench's pick), so a
#: change of serving defaults does not silently move the designs' table
CONTROL = {"inbound_capacity": 20.0, "reciprocal_weight": 0.5, "reply_capacity": None}
METRIC = "mutual_likes_per_1000"

_STATE: dict[str, Any] = {}  # per process: worlds, clusters, covariates (forked)


def _rankers() -> tuple[sim.Ranker, sim.Ranker]:
    control, boost = merged_config(CONTROL), merged_config({**CONTROL, **BOOST})
    return sim.Ranker(control, name="control"), sim.Ranker(boost, name="boost")


@dataclass(frozen=True)
class Plan:
    """What a world's pre-period pre-registers (never the truth): the two-sided allocation
    and β from the market balance, the switchback period and burn-in from the carry-over."""

    two_sided: TwoSidedPlan
    switchback: SwitchbackPlan


def _experiment(
    design: str, salt: str, treated: bool = True, plan: Plan | None = None
) -> Experiment:
    arms = [{"name": "control"}, {"name": "treatment", "rerank": BOOST if treated else {}}]
    spec: dict[str, Any] = {"kind": design, **DESIGNS[design]}
    if spec["kind"] == "two_sided" and plan is not None:
        spec.update(plan.two_sided.design())
    if spec["kind"] == "switchback":
        spec.update(plan.switchback.design() if plan is not None else {"period_minutes": 1440})
    return Experiment(id=f"bench-{_kind(design)}", salt=salt, arms=arms, design=spec)


def _kind(design: str) -> str:
    """The design kind of a row name (``cluster strata=4`` → ``cluster``)."""
    return str(DESIGNS[design].get("kind", design))


def build(scenarios: list[str], pop_cfg: sim.PopulationConfig, seed: int) -> dict[str, Any]:
    pop = sim.generate_population(pop_cfg, seed=seed)
    control, boost = _rankers()
    worlds, clusters, covs, plans, strata = {}, {}, {}, {}, {}
    for name in sorted({("balanced" if s == "aa" else s) for s in scenarios}):
        t0 = time.perf_counter()
        w = sim.World(pop, sim.REGIMES[name], control, seed=seed)
        w.scores(boost)
        worlds[name] = w
        clusters[name] = pre_period_clusters(w, seed=seed)
        covs[name] = covariates(w)
        # the strata of the clusters and of the markets (switchback regions), from the
        # pre-period as a snapshot at start would take them (same for every salt)
        strata[name] = {
            d: pre_period_strata(
                _experiment(d, "strata"),
                w,
                clusters[name] if _kind(d) == "cluster" else pop.market,
                covs[name],
            )
            for d in DESIGNS
            if DESIGNS[d].get("strata")
        }
        m = w.market
        plans[name] = Plan(
            two_sided_plan(pre_period_balance(w)),
            switchback_plan(carry_over_days(w), m.warmup_days, m.days),
        )
        print(
            f"  world {name}: {time.perf_counter() - t0:.1f}s, "
            f"{np.unique(clusters[name]).shape[0]} clusters, two-sided plan {plans[name]}",
            flush=True,
        )
    return {
        "pop": pop,
        "worlds": worlds,
        "clusters": clusters,
        "covs": covs,
        "plans": plans,
        "strata": strata,
    }


def _truth(world: sim.World, boost: sim.Ranker, seeds: range) -> list[float]:
    n = world.pop.n
    out = []
    for s in seeds:
        t = world.run(boost, sim.Assignment.everyone(n), seed=100_000 + s)
        c = world.run(boost, sim.Assignment.nobody(n), seed=100_000 + s)
        out.append(sim.mutual_likes_per_1000(t) - sim.mutual_likes_per_1000(c))
    return out


def _replicate(task: tuple[str, str, int, int, bool]) -> list[dict[str, Any]]:
    scenario, design, r, bootstrap, cuped = task
    st = _STATE
    key = "balanced" if scenario == "aa" else scenario
    world = st["worlds"][key]
    control, boost = _rankers()
    treated = scenario != "aa"
    exp = _experiment(design, f"{scenario}-{design}-{r}", treated, st["plans"][key])
    res = simulate(
        exp,
        world,
        boost if treated else control,
        seed=r,
        clusters=st["clusters"][key] if _kind(design) == "cluster" else None,
        strata=st["strata"][key].get(design),
    )
    ro = analyze(
        exp.design,
        ["control", "treatment"],
        [1.0, 1.0],
        res.rows,
        metrics=[METRIC],
        assigned=res.assigned,
        covariates=st["covs"][key],
        cuped=cuped,
        bootstrap=bootstrap,
        seed=r,
    )
    reads = [(design, ro.estimate(METRIC))]
    if design == "two_sided":  # TSRI-k on the same cells and the same bootstrap draws
        rows, col = res.rows, res.rows.outcomes[METRICS[METRIC].numerator]
        family = tsri_family(
            rows.viewer, rows.candidate, rows.viewer_arm, rows.candidate_arm, col, rows.weight,
            beta=exp.design.tsri_beta, ks=(0.0, *TSRI_K), scale=METRICS[METRIC].scale,
            bootstrap=bootstrap, seed=r,
        )  # fmt: skip
        assert family[0].effect == reads[0][1].effect  # the served readout's draws
        reads += [(f"two_sided k={k:g}", e) for k, e in zip(TSRI_K, family[1:], strict=True)]
    out = []
    for name, e in reads:
        out.append(
            {
                "scenario": scenario,
                "design": name,
                "r": r,
                "effect": e.effect,
                "se": e.se,
                "lo": e.ci_low,
                "hi": e.ci_high,
                "p": e.p,
                "blocked": ro.blocked,
                "srm_min_p": min((c.p for c in ro.srm), default=1.0),
                "cells": [e.extra.get(f"r{c}") for c in ("00", "01", "10", "11")]
                if design == "two_sided"
                else None,
            }
        )
    return out


def _init(state: dict[str, Any]) -> None:
    _STATE.update(state)


_ROWS = [
    "user",
    "item",
    "two_sided",
    *(f"two_sided k={k:g}" for k in TSRI_K),
    "cluster",
    "cluster strata=4",
    "switchback",
    "switchback strata=4",
]


def summarise(rows: list[dict[str, Any]], truth: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    keys = sorted(
        {(r["scenario"], r["design"]) for r in rows},
        key=lambda k: (k[0], _ROWS.index(k[1])),
    )
    for scen, design in keys:
        every = [r for r in rows if r["scenario"] == scen and r["design"] == design]
        # a readout with no estimate or no SE (an arm with no unit, or one cluster alone in
        # an arm: no variance to estimate) counts against coverage, not in the moments
        sel = [r for r in every if np.isfinite(r["effect"]) and np.isfinite(r["se"])]
        eff = np.array([r["effect"] for r in sel])
        se = np.array([r["se"] for r in sel])
        tau = truth[scen]
        cover = np.mean([(r["lo"] <= tau <= r["hi"]) for r in every])
        sd = float(eff.std(ddof=1))
        row = {
            "scenario": scen,
            "design": design,
            "R": len(every),
            "no_se": len(every) - len(sel),
            "truth": tau,
            "mean": float(eff.mean()),
            "bias": float(eff.mean() - tau),
            "rel_bias": float((eff.mean() - tau) / abs(tau)) if tau else None,
            "rel_bias_mcse": float(sd / np.sqrt(len(sel)) / abs(tau)) if tau else None,
            "sd": sd,
            "mean_se": float(se.mean()),
            "se_sd": float(se.mean() / sd) if sd else None,
            "coverage": float(cover),
            "rmse": float(np.sqrt(np.mean((eff - tau) ** 2))),
            "fpr": float(np.mean([r["p"] < 0.05 for r in every])),
            "blocked": float(np.mean([r["blocked"] for r in every])),
        }
        if design.startswith("two_sided"):  # mean outcome per impression of each cell
            row["cells"] = np.nanmean([r["cells"] for r in sel], axis=0).tolist()
        out.append(row)
    return out


def arm_shares(n_ids: int) -> dict[str, Any]:
    exp = _experiment("user", "shares")
    counts = np.bincount(arm_indices(exp, [f"u{i}" for i in range(n_ids)]), minlength=2)
    share = counts / n_ids
    return {
        "ids": n_ids,
        "counts": counts.tolist(),
        "shares": share.tolist(),
        "max_abs_dev": float(np.abs(share - 0.5).max()),
    }


def srm_false_alarms(n_salts: int, n_ids: int) -> dict[str, Any]:
    ids = [f"u{i}" for i in range(n_ids)]
    alarms = 0
    for s in range(n_salts):
        exp = _experiment("user", f"srm-{s}")
        counts = np.bincount(arm_indices(exp, ids), minlength=2)
        alarms += srm_check("viewer assignments", counts, [0.5, 0.5]).p < 0.001
    return {"salts": n_salts, "ids": n_ids, "alarms": int(alarms), "rate": alarms / n_salts}


def assignment_only(out: str, salts: int) -> None:
    """The assignment rows at full size, merged into an existing result file."""
    t0 = time.perf_counter()
    extra = {
        "arm_shares_1m": arm_shares(1_000_000),
        "srm_assignment_false_alarms": srm_false_alarms(salts, 2000),
    }
    path = Path(out)
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(extra)
    result.setdefault("timing", {})["assignment_s"] = time.perf_counter() - t0
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(extra, indent=2))


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | design | R | truth | rel. bias (MC SE) | SD | mean SE | SE/SD | coverage "
        "| RMSE | FPR | blocked |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        rb = "–" if t["rel_bias"] is None else f"{t['rel_bias']:+.1%} ({t['rel_bias_mcse']:.1%})"
        fpr = f"{t['fpr']:.3f}" if t["scenario"] == "aa" else "–"
        lines.append(
            f"| {t['scenario']} | {t['design']} | {t['R']} | {t['truth']:.2f} | {rb} | "
            f"{t['sd']:.2f} | {t['mean_se']:.2f} | {t['se_sd']:.2f} | {t['coverage']:.3f} | "
            f"{t['rmse']:.2f} | {fpr} | {t['blocked']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small population, R=60")
    ap.add_argument("--reps", type=int, default=None, help="replications per design")
    ap.add_argument("--aa-reps", type=int, default=None)
    ap.add_argument("--regimes", action="store_true", help="+ demand/supply-constrained rows")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--no-cuped", action="store_true", help="read out without CUPED")
    ap.add_argument("--scenarios", default=None, help="comma-separated (default: all)")
    ap.add_argument("--out", default="bench/results/experiments.json")
    ap.add_argument(
        "--population", default=None, help="MARKETSxSIZE (e.g. 4x150: the determinism check)"
    )
    ap.add_argument(
        "--assignment-only",
        action="store_true",
        help="only arm shares at 1M ids and the SRM false-alarm rate, merged into --out",
    )
    ap.add_argument("--srm-salts", type=int, default=None)
    ap.add_argument("--truth-seeds", type=int, default=None, help="default min(R, 300)")
    ap.add_argument(
        "--no-assignment",
        action="store_true",
        help="skip the arm-share and SRM rows (run them apart with --assignment-only)",
    )
    args = ap.parse_args()
    if args.assignment_only:
        assignment_only(args.out, args.srm_salts or 2000)
        return
    reps = args.reps or (60 if args.quick else 1000)
    aa_reps = args.aa_reps or (60 if args.quick else 2 * reps)
    pop_cfg = (
        sim.PopulationConfig(markets=12, market_size=300) if args.quick else sim.PopulationConfig()
    )
    if args.population:
        m, size = (int(v) for v in args.population.lower().split("x"))
        pop_cfg = sim.PopulationConfig(markets=m, market_size=size)
    scenarios = ["no_interference", "balanced", "aa"]
    if args.regimes:
        scenarios += ["demand_constrained", "supply_constrained"]
    if args.scenarios:
        scenarios = args.scenarios.split(",")
    designs = args.designs.split(",")
    started = time.time()
    print(
        f"population {pop_cfg.markets}x{pop_cfg.market_size}; R={reps}, A/A R={aa_reps}", flush=True
    )
    state = build(scenarios, pop_cfg, args.seed)
    _init(state)
    _, boost = _rankers()
    truth_seeds = range(args.truth_seeds or min(reps, 300))
    truth_runs: dict[str, list[float]] = {}
    for scen in scenarios:
        if scen == "aa":
            truth_runs[scen] = [0.0]
        else:
            t0 = time.perf_counter()
            truth_runs[scen] = _truth(state["worlds"][scen], boost, truth_seeds)
            print(
                f"  truth {scen}: {np.mean(truth_runs[scen]):.3f} "
                f"(sd {np.std(truth_runs[scen]):.3f}, {time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    truth = {s: float(np.mean(v)) for s, v in truth_runs.items()}
    tasks = []
    for scen in scenarios:
        n = (
            aa_reps
            if scen == "aa"
            else (reps if scen in ("no_interference", "balanced") else min(reps, 200))
        )
        tasks += [
            (scen, d, r, args.bootstrap, not args.no_cuped) for d in designs for r in range(n)
        ]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, initializer=_init, initargs=(state,)) as pool:
        for i, reads in enumerate(pool.imap_unordered(_replicate, tasks, chunksize=8)):
            rows.extend(reads)
            if (i + 1) % 500 == 0:
                print(
                    f"  {i + 1}/{len(tasks)} replications, {time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
    sim_s = time.perf_counter() - t0
    # arrival order depends on the workers: sort, so the same seed gives the same table
    rows.sort(key=lambda r: (r["scenario"], r["design"], r["r"]))
    table = summarise(rows, truth)
    extra: dict[str, Any] = {
        "srm_readout_false_alarms": float(
            np.mean([r["blocked"] for r in rows if r["scenario"] in ("aa", "no_interference")])
        )
        if any(r["scenario"] in ("aa", "no_interference") for r in rows)
        else None,
    }
    if not args.no_assignment:
        extra["arm_shares_1m"] = arm_shares(10_000 if args.quick else 1_000_000)
        extra["srm_assignment_false_alarms"] = srm_false_alarms(200 if args.quick else 5000, 2000)
    result = {
        "config": {
            "population": pop_cfg.model_dump(),
            "reps": reps,
            "aa_reps": aa_reps,
            "boost": BOOST,
            "designs": DESIGNS,
            "plans": {k: asdict(v) for k, v in state["plans"].items()},
            "seed": args.seed,
            "bootstrap": args.bootstrap,
            "cuped": not args.no_cuped,
            "regimes": {
                s: sim.REGIMES["balanced" if s == "aa" else s].model_dump() for s in scenarios
            },
        },
        "truth": {
            s: {"mean": truth[s], "sd": float(np.std(v)), "seeds": len(v)}
            for s, v in truth_runs.items()
        },
        "table": table,
        **extra,
        "timing": {
            "total_s": time.time() - started,
            "replications_s": sim_s,
            "workers": args.workers,
            "load_after": os.getloadavg(),
            "machine": platform.platform(),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(table))
    print(json.dumps(extra, indent=2))
    print(
        f"total {time.time() - started:.0f}s (replications {sim_s:.0f}s on {args.workers} workers)"
    )


if __name__ == "__main__":
    main()
