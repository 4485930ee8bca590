"""Where the API's time goes: the served pipeline's stages, in process, beside the bare query.

    $(./dev env)/bin/python bench/api_stages.py --keep           # build bench/api's 20k namespace
    $(./dev env)/bin/python bench/api_stages.py --reuse ID       # profile on a kept namespace
    $(./dev env)/bin/python bench/api_stages.py --reuse ID --ab  # A/B, paired (below)
    $(./dev env)/bin/python bench/api_stages.py --reuse ID --drop  # then delete it

The namespace is bench/api's (same catalogue, same 500 members with 5 likes seeded through the
event path; ``--reuse`` takes an id kept by either script). One :class:`Discovery` is built in
this process with the settings the API serves with, warmed like bench/api warms the server
(a closed loop at c=4), then a closed loop at ``--concurrency`` runs for ``--duration`` s over
the members, alternating each request with the bare candidate ``_msearch`` of the same plan
(``generate_candidates``: what bench/api's bare side sends), so a load change on the shared
machine hits both columns alike. Each request's stage timings (``Recommendations.timings_ms``:
the query hydrators by name, candidates, features, rerank) and the feature stage's lookups,
timed by wrappers this tool installs on the feature store (never in the package), are printed
as p50 / p90 / p99 and written to bench/results/api-stages.json. Served impressions are
recorded as the API records them (background flushes, as on the server); HTTP is not in it.
The heap is frozen after start-up with the API's garbage-collector settings (``api_gc_freeze``,
``api_gc_threshold0``): without that, full collections of this process's heap paused 130–270 ms
every ~4 s and set the in-process p99 (whole p99 202 ms without it, 75–94 ms with it), which
the server, frozen at start-up, does not see.

``--ab`` builds a second pipeline whose feature hydrator starts the viewer's lookups only once
the candidates are back (the layout before they ran beside the ``_msearch``) and answers every
member with both, back to back in random order, then sends the bare query: both layouts'
stages, and the paired difference of the whole request (mean, SE, ratio of medians).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api import _pct, build, personal_requests  # bench/api.py, beside this file
from opendisco import clients, load_settings
from opendisco._domain import USERS_COLLECTION

RESULTS = Path(__file__).resolve().parent / "results" / "api-stages.json"
#: the feature store's lookups, timed one by one (attribute paths on the FeatureStore)
LOOKUPS = {
    "f.exposure": ("counters", "read"),  # the process's copy, else the engine
    "f.inbound": (None, "_inbound"),
    "f.tastes": (None, "_tastes"),
    "f.itemsim": (None, "_similar"),
    "f.taste_profile": (None, "profile"),
    "f.viewer_vector": (None, "profile_vector"),
    "f.vectors": (None, "_vectors"),
}
_current: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "stage_timings", default=None
)


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*a, **kw)
        finally:
            row = _current.get()
            if row is not None:
                row[name] = row.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    return wrapper


def instrument(store: Any) -> None:
    """Time the feature store's lookups (instance attributes shadow the methods)."""
    for name, (owner, attr) in LOOKUPS.items():
        target = getattr(store, owner) if owner else store
        setattr(target, attr, _timed(name, getattr(target, attr)))


def slowest(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    top = sorted(rows, key=lambda r: r.get("whole_ms", 0.0))[-max(1, len(rows) // 100) :]
    return [{k: round(v, 2) for k, v in r.items()} for r in top]


def summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for r in rows for k in r})
    out = {}
    for k in keys:
        xs = [r.get(k, 0.0) for r in rows]
        out[k] = {
            "p50": round(statistics.median(xs), 2),
            "p90": round(_pct(xs, 0.90), 2),
            "p99": round(_pct(xs, 0.99), 2),
            "mean": round(statistics.fmean(xs), 2),
        }
    return out


class AfterCandidates:
    """The A side of ``--ab``: the default feature hydrator with the viewer's lookups started
    only once the candidates are back (the layout before they overlapped the ``_msearch``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def prepare(self, plan: Any) -> None:
        return None

    async def features(self, plan: Any, batch: Any, base: Any, prepared: Any = None) -> Any:
        return await self.inner.features(plan, batch, base, None)


def pipelines(settings: Any, os_client: Any, db: Any, ab: bool) -> dict[str, Any]:
    """``{"served": the default Discovery}``, with ``ab`` also ``{"after": ...}`` (A side)."""
    from dataclasses import replace

    from opendisco.serving import Discovery

    out = {"served": Discovery(settings, os_client, db)}
    if ab:
        a = Discovery(settings, os_client, db)
        a.parts = replace(
            a.parts, feature_hydrators=[AfterCandidates(h) for h in a.parts.feature_hydrators]
        )
        out = {"after": a, **out}
    for disco in out.values():
        instrument(disco.features)
    return out


async def profile(settings: Any, plans: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from opendisco.api._gc import freeze_startup_heap
    from opendisco.queries import generate_candidates

    os_client = clients.async_opensearch(settings, maxsize=64)
    mongo = clients.mongo_async(settings)
    discos = pipelines(settings, os_client, mongo[settings.mongo_db], args.ab)
    users = list(plans)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in discos}
    pairs: list[dict[str, float]] = []

    async def one(name: str, user: str) -> dict[str, float]:
        disco = discos[name]
        row: dict[str, float] = {}
        token = _current.set(row)
        try:
            t0 = time.perf_counter()
            recs = await disco.recommend(user, k=args.k, request_id=uuid.uuid4().hex)
            row["whole_ms"] = (time.perf_counter() - t0) * 1e3
            disco.record_served([{"id": r.id, "item": r.item} for r in recs.items])
            row.update({k: v for k, v in recs.timings_ms.items() if k != "total_ms"})
        finally:
            _current.reset(token)
        return row

    async def turn(user: str, record: bool, flip: bool) -> None:
        names = list(discos)[::-1] if flip else list(discos)
        got = {name: await one(name, user) for name in names}
        t0 = time.perf_counter()
        await generate_candidates(os_client, settings, plans[user])
        bare = (time.perf_counter() - t0) * 1e3
        if record:
            for name, row in got.items():
                rows[name].append({**row, "bare_ms": bare})
            pairs.append({name: row["whole_ms"] for name, row in got.items()})

    async def loop(conc: int, dur: float, record: bool, seed: int) -> None:
        rng = random.Random(seed)
        stop = time.perf_counter() + dur

        async def worker() -> None:
            while time.perf_counter() < stop:
                await turn(rng.choice(users), record, rng.random() < 0.5)

        await asyncio.gather(*(worker() for _ in range(conc)))

    mirrors = []
    try:
        for disco in discos.values():
            await disco.ensure()  # (no query encoder: for_you requests only)
            if settings.signal_copies_s > 0:  # as the API does: the signals' copies
                mirrors.append(asyncio.create_task(disco.copies.run()))
        if settings.api_gc_freeze:  # as the API process does after start-up (its p99)
            freeze_startup_heap(settings.api_gc_threshold0)
        await loop(4, args.warm, False, 4)
        load_before = os.getloadavg()[0]
        await loop(args.concurrency, args.duration, True, args.concurrency)
        load_after = os.getloadavg()[0]
        for disco in discos.values():
            await disco.drain()
    finally:
        for task in mirrors:
            task.cancel()
        await asyncio.gather(*mirrors, return_exceptions=True)
        await os_client.close()
        await mongo.close()
    res: dict[str, Any] = {
        "items": args.items,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "n": len(pairs),
        "load_avg_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "stages_ms": {name: summary(r) for name, r in rows.items()},
        # what the slowest 1% of requests spent where (the p99's make-up), each whole row
        "slowest_1pct": {name: slowest(r) for name, r in rows.items()},
    }
    if args.ab:  # paired: the same member, back to back, in random order
        d = [p["served"] - p["after"] for p in pairs]
        res["paired_whole_ms"] = {
            "mean_diff": round(statistics.fmean(d), 2),
            "se": round(statistics.stdev(d) / len(d) ** 0.5, 2),
            "median_ratio": round(
                statistics.median(p["served"] for p in pairs)
                / statistics.median(p["after"] for p in pairs),
                3,
            ),
        }
    return res


def show(res: dict[str, Any]) -> None:
    load = res["load_avg_1m"]
    print(
        f"n={res['n']} c={res['concurrency']} load {load['before']} -> {load['after']}",
        file=sys.stderr,
    )
    for name, stages in res["stages_ms"].items():
        print(f" {name}", file=sys.stderr)
        for k, s in stages.items():
            print(
                f"  {k:18} p50 {s['p50']:7.2f}  p90 {s['p90']:7.2f}  p99 {s['p99']:7.2f}  "
                f"mean {s['mean']:7.2f}",
                file=sys.stderr,
            )
    if "paired_whole_ms" in res:
        print(f" served - after (paired whole request): {res['paired_whole_ms']}", file=sys.stderr)


async def main_async(args: argparse.Namespace) -> dict[str, Any] | None:
    rid = args.reuse or uuid.uuid4().hex[:6]
    settings = load_settings(index_alias=f"bench-api-{rid}-items", mongo_db=f"bench_api_{rid}")
    mongo = clients.mongo(settings)
    sync_os = clients.opensearch(settings)
    try:
        if args.drop:
            return None
        if args.reuse:
            users = list(mongo[settings.mongo_db][USERS_COLLECTION].find({}))
            if not users:
                raise SystemExit(f"nothing to reuse in {settings.mongo_db}")
        else:
            users = await build(settings, args.items)
            print(f"kept namespace: --reuse {rid}" if args.keep else "", file=sys.stderr)
        plans = await personal_requests(settings, users, args.history_users, args.likes, args.k)
        return await profile(settings, plans, args)
    finally:
        if args.drop or not (args.keep or args.reuse):
            sync_os.indices.delete(
                index=f"bench-api-{rid}-items*", ignore_unavailable=True, expand_wildcards="all"
            )
            mongo.drop_database(settings.mongo_db)
        sync_os.close()
        mongo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--history-users", type=int, default=500)
    ap.add_argument("--likes", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    ap.add_argument("--warm", type=float, default=5.0, help="seconds of c=4 warm-up first")
    ap.add_argument("--keep", action="store_true", help="keep the namespace; prints its id")
    ap.add_argument("--reuse", default=None, help="namespace id of a kept run")
    ap.add_argument("--drop", action="store_true", help="delete the --reuse namespace and exit")
    ap.add_argument(
        "--ab",
        action="store_true",
        help="alternate the served pipeline with one that starts the viewer's lookups only "
        "after the candidates (paired, same member back to back)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    res = asyncio.run(main_async(args))
    if res is None:
        return
    show(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
