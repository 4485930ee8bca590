"""Off-policy evaluation on the synthetic marketplace, where a policy's true value is known.

    $(./dev env)/bin/python bench/offpolicy.py [--members 300] [--seeds 200] [--k 10]

1. The synthetic marketplace (``opendisco.eval.synthetic_dataset``: members, two-sided
   eligibility, seeded likes) is replayed into namespace ``evalope`` (items, reindex, every
   member's fitting likes through ``Discovery.record_events``).
2. Every member asks the **served pipeline** for a page with ``explore_rate = 1``: each answer
   is a Plackett–Luce draw over the reranked pool and the served-list log holds its feature
   rows, pool, pool weights and per-slot propensities (the real side effect).
3. Outcomes come from a known model: member ``u`` likes profile ``p`` shown at slot ``j`` with
   probability ``theta_j * rho(u, p)``, ``rho = sigmoid(A + B * shared interests + C *
   log1p(popularity))`` for two-sided-eligible pairs (0 otherwise), ``theta_j = (1 + j) **
   -0.5`` (position-based examination); the like is mutual with probability ``rho(owner(p),
   profile(u))``.
4. A LambdaMART ranker is trained (``train_ltr``) on the logged lists with outcomes drawn from
   that model (like = 2, mutual = 4); both it and the linear scorer are then valued
   off-policy over ``--seeds`` repetitions: each redraws the exploration (``pl_sample`` over
   the logged pool weights, the serving code's sampler) and the outcomes; IPS, SNIPS and DR
   (``opendisco.eval._offpolicy``) estimate the expected likes per list over the first ``k``
   slots, whose true value is computed exactly from ``rho``. Reported: bias, SD, mean SE and
   the 95% interval's coverage per estimator.
5. Both policies are served deterministically through the pipeline (the model loaded through
   ``model_file``) and their expected mutual likes per 1,000 impressions computed exactly.

Writes bench/results/offpolicy.json and the ``offpolicy`` section of bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from opendisco import clients, load_settings
from opendisco.eval import eligible_matrix, log_lists, replay, synthetic_dataset, time_split
from opendisco.eval._compare import namespaced
from opendisco.eval._offpolicy import SlateLogs, estimate
from opendisco.rerank import (
    LinearScorer,
    RerankConfig,
    align_features,
    join_outcomes,
    pl_marginals,
    pl_sample,
    save_model,
    train_ltr,
)
from opendisco.signals import ServedLog

HERE = Path(__file__).resolve().parent
A, B, C = -2.5, 0.9, 0.35  # rho = sigmoid(A + B * shared interests + C * log1p(popularity))


def latent(n: int) -> tuple[dict[str, int], np.ndarray, dict[str, str]]:
    """Member index, rho[viewer, profile] and profile -> owner of the marketplace."""
    data = synthetic_dataset(n)
    users = [data.users[f"u{i}"] for i in range(n)]
    items = [data.items[f"p{i}"] for i in range(n)]
    elig = eligible_matrix(items, users)
    tags = [set(it.get("tags") or ()) for it in items]
    pop = np.log1p([float(it.get("popularity") or 0.0) for it in items])
    overlap = np.array([[len(set(u.get("interests") or ()) & t) for t in tags] for u in users])
    rho = elig / (1.0 + np.exp(-(A + B * overlap + C * pop[None, :])))
    return {f"p{i}": i for i in range(n)}, rho, {f"p{i}": f"u{i}" for i in range(n)}


def theta(k: int) -> np.ndarray:
    return (1.0 + np.arange(k)) ** -0.5


async def read_lists(settings: Any) -> list[dict[str, Any]]:
    mongo = clients.mongo_async(settings)
    try:
        return await ServedLog(mongo[settings.mongo_db]).read()
    finally:
        await mongo.close()


async def clear_lists(settings: Any) -> None:
    mongo = clients.mongo_async(settings)
    try:
        await mongo[settings.mongo_db]["served_lists"].delete_many({})
    finally:
        await mongo.close()


def outcomes(
    lists: list[dict[str, Any]], rho: np.ndarray, pidx: dict[str, int], rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Like and mutual events for the shown slots of ``lists`` (after each list)."""
    evs = []
    for d in lists:
        u = int(str(d["user_id"])[1:])
        th = theta(len(d["shown"]))
        for j, r in enumerate(d["shown"]):
            p = pidx[d["ids"][r]]
            if rng.random() < th[j] * rho[u, p]:
                kind = "match" if rng.random() < rho[p, u] else "like"
                at = d["at"] + timedelta(minutes=1)
                item = d["ids"][r]
                evs.append({"type": kind, "user_id": d["user_id"], "item_id": item, "ts": at})
    return evs


def slate_world(lists: list[dict[str, Any]], k: int) -> tuple[list, list, list, list]:
    """Per explored list: aligned X, pool rows, pool weights and the logging marginals."""
    Xs, pools, ws, margs, cache = [], [], [], [], {}
    for d in lists:
        key = tuple(d["pool_w"])
        if key not in cache:
            cache[key] = pl_marginals(np.asarray(key), k, samples=20000)
        m = np.zeros((len(d["ids"]), k))
        m[np.asarray(d["pool"])] = cache[key][:, :k]
        Xs.append(align_features(d["X"], d["features"]))
        pools.append(np.asarray(d["pool"]))
        ws.append(np.asarray(d["pool_w"]))
        margs.append(m)
    return Xs, pools, ws, margs


def true_value(lists, Xs, score, rho, pidx, k) -> float:
    th, total = theta(k), 0.0
    for d, X in zip(lists, Xs, strict=True):
        u = int(str(d["user_id"])[1:])
        top = np.argsort(-score(X), kind="stable")[:k]
        total += float(th[: len(top)] @ np.array([rho[u, pidx[d["ids"][r]]] for r in top]))
    return total / len(lists)


def draw(lists, Xs, pools, ws, margs, rho, pidx, k, rng, logged: bool) -> SlateLogs:
    th = theta(k)
    shown, reward = [], []
    for d, pool, w in zip(lists, pools, ws, strict=True):
        u = int(str(d["user_id"])[1:])
        rows = np.asarray(d["shown"][:k]) if logged else pool[pl_sample(w, k, rng)[0]]
        p = np.array([rho[u, pidx[d["ids"][r]]] for r in rows])
        shown.append(rows)
        reward.append((rng.random(k) < th * p).astype(float))
    return SlateLogs(Xs, np.asarray(shown), np.asarray(reward), margs)


def mutual_per_1000(lists: list[dict[str, Any]], rho: np.ndarray, pidx: dict[str, int]) -> dict:
    likes = mutual = shown = 0.0
    for d in lists:
        u = int(str(d["user_id"])[1:])
        th = theta(len(d["shown"]))
        for j, r in enumerate(d["shown"]):
            p = pidx[d["ids"][r]]
            like = th[j] * rho[u, p]
            likes += like
            mutual += like * rho[p, u]
            shown += 1
    return {
        "impressions": int(shown),
        "likes_per_1000": round(1000 * likes / shown, 3),
        "mutual_likes_per_1000": round(1000 * mutual / shown, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--namespace", default="evalope")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="independent exploration + outcome draws per logged list in each repetition (a "
        "member asking that many times; more lists per repetition)",
    )
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument(
        "--pool-factor",
        type=float,
        default=None,
        help="explore_pool_factor of the logging run (default: the serving setting); a pool "
        "that covers the candidate list gives every policy support",
    )
    args = ap.parse_args()
    k, t0 = args.k, time.perf_counter()
    data = synthetic_dataset(args.members)
    split = time_split(data)
    settings = namespaced(load_settings(), args.namespace)
    pidx, rho, _ = latent(args.members)
    stage = split.stage("test")
    users = [str(u) for u in stage.users]
    exclude = [[str(stage.items[i]) for i in h] for h in stage.history]
    if not args.no_replay:
        replay(settings, data, split, stage="test", fresh=True)
    asyncio.run(clear_lists(settings))
    pool = {} if args.pool_factor is None else {"explore_pool_factor": args.pool_factor}
    explore = settings.model_copy(update={"explore_rate": 1.0, "served_log": True, **pool})
    asyncio.run(log_lists(explore, users, exclude, k=k))
    lists = [d for d in asyncio.run(read_lists(settings)) if d["explored"] and d["k"] == k]
    lists = [d for d in lists if len(d["shown"]) == k]
    # a ranker learnt from these logs with an independent outcome draw
    policy_events = outcomes(lists, rho, pidx, np.random.default_rng(10_000))
    data_ltr = join_outcomes(lists, policy_events)
    ltr = train_ltr(data_ltr, k=k)
    model_path, _ = save_model(ltr, HERE / "results" / "models-synthetic")
    linear = LinearScorer(RerankConfig())
    targets = {"linear": linear.score, "ltr": ltr.scorer.score}
    Xs, pools, ws, margs = slate_world(lists, k)
    truth = {n: true_value(lists, Xs, f, rho, pidx, k) for n, f in targets.items()}
    # each logged list asked --repeat times (the truth is the same mean over the copies)
    lists, Xs, pools, ws, margs = (x * args.repeat for x in (lists, Xs, pools, ws, margs))
    runs: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {
        n: {"ips": [], "snips": [], "dr": []} for n in targets
    }
    unsupported: dict[str, list[float]] = {n: [] for n in targets}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        logs = draw(lists, Xs, pools, ws, margs, rho, pidx, k, rng, seed == 0 and args.repeat == 1)
        for n, f in targets.items():
            res = estimate(logs, f)
            unsupported[n].append(res.unsupported)
            for est, e in res.estimates.items():
                runs[n][est].append((e["value"], e["se"], e["ci_low"], e["ci_high"]))
    table = {}
    for n in targets:
        table[n] = {
            "true_value": round(truth[n], 5),
            # share of the policy's slots whose item the logging pool could not show: IPS and
            # SNIPS count them as 0, so a share above 0 biases them down (no support)
            "unsupported_slots": round(float(np.mean(unsupported[n])), 4),
        }
        for est, rows in runs[n].items():
            a = np.asarray(rows)
            table[n][est] = {
                "mean": round(float(a[:, 0].mean()), 5),
                "bias": round(float(a[:, 0].mean() - truth[n]), 5),
                "sd": round(float(a[:, 0].std(ddof=1)), 5),
                "mean_se": round(float(a[:, 1].mean()), 5),
                "coverage": round(float(((a[:, 2] <= truth[n]) & (truth[n] <= a[:, 3])).mean()), 3),
            }
    # both policies served deterministically through the pipeline
    served = {}
    for name, update in (("linear", {}), ("ltr", {"model_file": model_path})):
        asyncio.run(clear_lists(settings))
        s = settings.model_copy(update={"explore_rate": 0.0, "served_log": True, **update})
        asyncio.run(log_lists(s, users, exclude, k=k))
        got = [d for d in asyncio.run(read_lists(settings)) if d["k"] == k]
        served[name] = mutual_per_1000(got, rho, pidx)
    result = {
        "members": args.members,
        "lists": len(lists),
        "repeat": args.repeat,
        "k": k,
        "seeds": args.seeds,
        "pool_factor": explore.explore_pool_factor,
        "model": model_path.name,
        "ltr_report": {kk: v for kk, v in ltr.report.items() if kk != "importance"},
        "offpolicy": table,
        "served": served,
        "seconds": round(time.perf_counter() - t0, 1),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = HERE / "results" / "offpolicy.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({"offpolicy": table, "served": served}, indent=2))
    write_readme(result)


def write_readme(r: dict[str, Any]) -> None:
    lines = [
        "<!-- offpolicy -->",
        "## offpolicy",
        "",
        f"`python bench/offpolicy.py --members {r['members']} --seeds {r['seeds']} --k {r['k']}"
        f" --repeat {r.get('repeat', 1)} --pool-factor {r.get('pool_factor', 2.0):g}`:"
        f" {r['lists'] // r.get('repeat', 1)} explored lists"
        " served by the real pipeline on the synthetic marketplace, each drawn"
        f" {r.get('repeat', 1)} time(s) per repetition ({r['lists']} lists)"
        " (Plackett–Luce over the first ceil(pool factor × k) rows of the reranked order,"
        " propensities from the served-list log);"
        " outcomes from a known position-based like model, so each policy's true value (expected"
        f" likes per list over {r['k']} slots) is exact. {r['seeds']} repetitions redraw the"
        " exploration and the outcomes; the 95% interval should cover the truth ~95% of the time"
        " where the policy is supported (unsupported slots: the share of the policy's top"
        f" {r['k']} the logging pool could not show, which IPS and SNIPS count as 0).",
        "",
        "| policy | true value | unsupported slots | estimator | mean | bias | SD | mean SE |"
        " 95% coverage |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, t in r["offpolicy"].items():
        for est in ("ips", "snips", "dr"):
            e = t[est]
            lines.append(
                f"| {n} | {t['true_value']:.4f} | {t.get('unsupported_slots', 0.0):.3f} | {est} |"
                f" {e['mean']:.4f} | {e['bias']:+.4f} |"
                f" {e['sd']:.4f} | {e['mean_se']:.4f} | {e['coverage']:.3f} |"
            )
    s = r["served"]
    lines += [
        "",
        "Served deterministically through the pipeline (LambdaMART loaded via `model_file`,"
        f" `{r['model']}`, trained on the logged lists with an independent outcome draw):",
        "",
        "| policy | impressions | expected likes / 1,000 | expected mutual likes / 1,000 |",
        "|---|---|---|---|",
    ]
    for n, m in s.items():
        lines.append(
            f"| {n} | {m['impressions']} | {m['likes_per_1000']:.2f} |"
            f" {m['mutual_likes_per_1000']:.2f} |"
        )
    lines += ["", "Full figures in `bench/results/offpolicy.json`.", "<!-- /offpolicy -->"]
    readme = HERE / "README.md"
    text = readme.read_text()
    block = "\n".join(lines)
    pat = re.compile(r"<!-- offpolicy -->.*?<!-- /offpolicy -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block
    readme.write_text(text.rstrip() + "\n")


if __name__ == "__main__":
    main()
