"""Discovery API under closed-loop load vs the bare OpenSearch candidate queries (same run).

    $(./dev env)/bin/python bench/api.py            # 20k items, 60 s per side and level
    $(./dev env)/bin/python bench/api.py --full     # 100k items
    $(./dev env)/bin/python bench/api.py --keep     # keep the namespace; prints its id
    $(./dev env)/bin/python bench/api.py --reuse ID # reuse a kept namespace (same --items)

A synthetic marketplace is written to MongoDB and indexed (content vectors from a hashed
bag-of-words projection instead of the model, so building 100k items takes seconds, not an
hour on 2 cores); some members get likes through the event path, so their requests are
personal (``for_you``). The API runs under uvicorn in a subprocess (``opendisco serve``, auth
on, impressions logged); the bare path sends, from this process, the exact candidate
``_msearch`` the API sends for the same member (``Discovery.plan`` →
``opendisco.queries.generate_candidates``). At concurrency 1/4/8/16 each side runs a
closed loop for the same duration, in alternating blocks (API, a settling pause, bare;
``--blocks``, default 4), so a drift of the shared machine hits both sides; QPS, p50 and
p99 are reported, with the level where QPS stops growing (saturation). Results:
bench/results/api.json and bench/README.md.

Levels run 60 s per side by default (:data:`DURATION_S`): at c=1 the API answers ~20
requests/s, so an 8 s level held ~160 requests and its p99 was the second-slowest one (one
background flush or collection landing on a request moved it); 20 s held ~400 (p99: the
fourth-slowest), and the same code's p99 ratio swung by ±0.3 between runs; 60 s holds ~1,100
(p99: the eleventh-slowest). Each level's p99 ratio comes with a bootstrap 95% interval
(:func:`ratio_interval`: each side's latencies resampled on their own), so a run says how
far its ratio can be trusted.

CPU per answered request is read per process (the API's, the engine's, FerretDB's) over each
side's blocks, and the engine's also by JVM thread pool (``bench/jvm_threads.py``: search,
write, get, refresh, JIT...), so the engine work only the API causes is named, not inferred.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jvm_threads import by_pool, thread_cpu_ms  # bench/jvm_threads.py, beside this file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "api"))
from api_support import free_port, stop_serve

from opendisco import clients, load_settings
from opendisco._domain import USERS_COLLECTION
from opendisco._settings import Settings
from opendisco.serving import ENCODER_LOADED

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "api.json"
SERVE_LOG = Path("/tmp") / f"bench-api-serve-{os.getpid()}.log"
README = ROOT / "README.md"
LEVELS = (1, 4, 8, 16)
#: seconds per level and side (see the module docstring: a p99 needs a thousand requests)
DURATION_S = 60.0
#: each level alternates API and bare blocks (drift between two long phases moved the
#: ratio by ±0.3 between back-to-back runs); the API's deferred writes (served impressions
#: flushed every second, the served-list log) settle before each bare block
BLOCKS = 4
SETTLE_S = 1.5


class HashedBowModel:
    """Stand-in encoder: sum of per-token pseudo-random vectors, normalised (similar texts ->
    similar vectors), deterministic, ~1000x faster than the transformer."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._cache: dict[str, np.ndarray] = {}

    def _tok(self, tok: str) -> np.ndarray:
        v = self._cache.get(tok)
        if v is None:
            rng = np.random.default_rng(zlib.crc32(tok.encode()))
            v = self._cache[tok] = rng.standard_normal(self.dim).astype(np.float32)
        return v

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for tok in re.findall(r"[a-z0-9]+", t.lower()):
                out[i] += self._tok(tok)
            out[i] /= np.linalg.norm(out[i]) or 1.0
        return out


async def build(settings: Settings, n: int) -> list[dict[str, Any]]:
    from opendisco.ingest import Embedder, generate_marketplace
    from opendisco.ingest._reindex import reindex

    t0 = time.perf_counter()
    items, users = generate_marketplace(n, seed=3)
    # a fresh database: plain inserts (write_sample's per-item upserts are slow on FerretDB)
    db = clients.mongo(settings)[settings.mongo_db]
    for coll, docs in ((settings.items_collection, items), (USERS_COLLECTION, users)):
        for i in range(0, len(docs), 5000):
            db[coll].insert_many(docs[i : i + 5000], ordered=False)
    db.client.close()
    embedder = Embedder(settings, model=HashedBowModel(settings.embedding_dim), persist=False)
    report = await reindex(settings, embedder=embedder)
    print(f"built {n} items in {time.perf_counter() - t0:.1f}s: {report}", file=sys.stderr)
    return users


async def personal_requests(
    settings: Settings, users: list[dict[str, Any]], n_users: int, likes: int, k: int
) -> dict[str, Any]:
    """Give ``n_users`` members ``likes`` likes each through the production event path
    (``Discovery.record_events``: user vectors, behaviour fold-in, graph edges, trending), so
    their requests take the personal ``for_you`` path, and return the exact candidate request
    the API then sends for each of them (``Discovery.plan``): the bare side's input.
    Idempotent (deterministic event ids)."""
    from datetime import UTC, datetime, timedelta

    from opendisco.serving import Discovery

    rng = random.Random(7)
    os_client = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    db = mongo[settings.mongo_db]
    try:
        ids = [d["_id"] async for d in db[settings.items_collection].find({}, {"_id": 1})]
        chosen = rng.sample(users, min(n_users, len(users)))
        disco = Discovery(settings, os_client, db)
        now = datetime.now(UTC)
        events = [
            {
                "id": f"bench-{u['_id']}-{j}",
                "type": "like",
                "user_id": u["_id"],
                "item_id": rng.choice(ids),
                "ts": now - timedelta(minutes=likes - j),
            }
            for u in chosen
            for j in range(likes)
        ]
        t0 = time.perf_counter()
        for i in range(0, len(events), 250):
            await disco.record_events(events[i : i + 250])
        print(
            f"seeded {len(events)} likes for {len(chosen)} users in "
            f"{time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
        return {
            u["_id"]: (await disco.plan("for_you", k, user_id=u["_id"])).request for u in chosen
        }
    finally:
        await os_client.close()
        await mongo.close()


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ratio_interval(
    api: list[float], bare: list[float], q: float = 0.99, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95% interval of ``_pct(api, q) / _pct(bare, q)``: each side's latencies
    resampled with replacement on their own (the sides are separate closed loops). Requests
    of one closed loop are not independent (a slow second slows its neighbours), so the
    interval is a lower bound on the run-to-run spread, not the whole of it."""
    if not api or not bare:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)

    def pct(xs: list[float]) -> np.ndarray:
        x = np.asarray(xs)
        draws_ = np.sort(rng.choice(x, size=(draws, len(x))), axis=1)
        return draws_[:, min(len(x) - 1, int(q * len(x)))]

    ratios = pct(api) / pct(bare)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return (round(float(lo), 2), round(float(hi), 2))


@dataclass
class Loop:
    """One side's latencies, errors and wall time, accumulated over a level's blocks."""

    lat: list[float] = field(default_factory=list)
    errors: int = 0
    degraded: int = 0
    wall: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.lat
        return {
            "n": len(lat),
            "qps": round(len(lat) / self.wall, 1) if self.wall else 0.0,
            "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
            "p99_ms": round(_pct(lat, 0.99) * 1000, 2) if lat else None,
            "errors": self.errors,
            "degraded": self.degraded,
        }


async def closed_loop(
    call: Any,
    users: list[dict[str, Any]],
    conc: int,
    dur: float,
    into: Loop | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """``conc`` workers calling back to back for ``dur`` s; ``into`` accumulates blocks."""
    acc = into if into is not None else Loop()
    stop = time.perf_counter() + dur
    rng = rng if rng is not None else random.Random(conc)

    async def worker() -> None:
        while time.perf_counter() < stop:
            user = rng.choice(users)
            t0 = time.perf_counter()
            try:
                deg = await call(user)
            except Exception:
                acc.errors += 1
                continue
            acc.lat.append(time.perf_counter() - t0)
            acc.degraded += bool(deg)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    acc.wall += time.perf_counter() - t0
    return acc.summary()


def _served_qps(side: dict[str, Any]) -> float:
    """QPS answered by the pipeline itself (degraded fallback answers excluded)."""
    return float(side["qps"]) * (1 - side.get("degraded", 0) / max(1, side["n"]))


def _saturation(rows: list[dict[str, Any]], side: str) -> int | None:
    """First concurrency level whose pipeline-served QPS grew < 10% over the previous level."""
    for prev, cur in itertools.pairwise(rows):
        if _served_qps(cur[side]) < _served_qps(prev[side]) * 1.10:
            return int(prev["concurrency"])
    return None


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Levels the API answered from the pipeline (< 1% degraded): where the ratio means
    pipeline vs engine, not fallback vs engine."""
    return [r for r in rows if r["api"]["degraded"] < 0.01 * max(1, r["api"]["n"])]


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Derived figures of a run (recomputable from the stored levels)."""
    rows = res["levels"]
    for r in rows:
        r["p50_ratio"] = round(r["api"]["p50_ms"] / r["bare"]["p50_ms"], 2)
    comp = _comparable(rows)
    res["saturation"] = {"api": _saturation(rows, "api"), "bare": _saturation(rows, "bare")}
    res["comparable_levels"] = [r["concurrency"] for r in comp]
    res["shedding_from"] = next((r["concurrency"] for r in rows if r not in comp), None)
    if comp:
        res["median_p99_ratio"] = round(statistics.median(r["p99_ratio"] for r in comp), 2)
        res["max_p99_ratio"] = max(r["p99_ratio"] for r in comp)
        res["median_p50_ratio"] = round(statistics.median(r["p50_ratio"] for r in comp), 2)
    # QPS at saturation: the best pipeline-served QPS over the levels, per side
    bare_peak = max(_served_qps(r["bare"]) for r in rows)
    res["peak_qps"] = {"bare": round(bare_peak, 1)}
    res["peak_ratio"] = {}
    for w in res.get("workers", []):
        peak = max(_served_qps(r["api_by_workers"][str(w)]) for r in rows)
        res["peak_qps"][f"api_w{w}"] = round(peak, 1)
        res["peak_ratio"][f"api_w{w}"] = round(peak / bare_peak, 2)
    return res


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    from opendisco.api import create_key
    from opendisco.queries import generate_candidates

    rid = args.reuse or uuid.uuid4().hex[:6]
    port = free_port()
    overrides = {
        "index_alias": f"bench-api-{rid}-items",
        "mongo_db": f"bench_api_{rid}",
        "api_port": port,
        "api_rate_limit": 1e9,
        "api_rate_burst": 1e9,
        "api_max_concurrency": 256,
    }
    settings = load_settings(**overrides)
    sync_os = clients.opensearch(settings)
    mongo = clients.mongo(settings)
    proc: subprocess.Popen[bytes] | None = None
    try:
        if args.reuse:  # built earlier by this script (--keep) with the same --items
            users = list(mongo[settings.mongo_db][USERS_COLLECTION].find({}))
            if len(users) == 0:
                raise SystemExit(f"nothing to reuse in {settings.mongo_db}")
        else:
            users = await build(settings, args.items)
            if args.keep:
                print(f"kept namespace: --reuse {rid}", file=sys.stderr)
        plans = await personal_requests(settings, users, args.history_users, args.likes, args.k)
        personal = list(plans)
        surfaces = sorted({r.surface for r in plans.values()})
        load_before = os.getloadavg()
        key, _ = create_key(mongo[settings.mongo_db], "bench", ["read"])
        env = {**os.environ, **{f"OPENDISCO_{k.upper()}": str(v) for k, v in overrides.items()}}
        base = f"http://127.0.0.1:{port}"
        os_client = clients.async_opensearch(settings, maxsize=64)
        sample = [{"_id": u} for u in personal]

        async def bare_call(user: dict[str, Any]) -> bool:
            cs = await generate_candidates(os_client, settings, plans[user["_id"]])
            return bool(cs.degraded)

        await closed_loop(bare_call, sample, 4, 2.0)  # warm
        bare_cpu = CpuMeter(settings, None)
        rows: list[dict[str, Any]] = [{"concurrency": c, "api_by_workers": {}} for c in args.levels]
        for workers in args.workers:
            proc = _serve(env, workers)
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), headers={"X-API-Key": key}
            ) as http:
                await _wait_ready(http, base, proc)

                async def api_call(user: dict[str, Any]) -> bool:
                    url = f"{base}/v1/users/{user['_id']}/recommendations?k={args.k}"
                    async with http.get(url) as r:
                        if r.status != 200:
                            raise RuntimeError(r.status)
                        return bool((await r.json())["degraded"])

                # warm every worker (and its fallback lists, refreshed at start)
                await closed_loop(api_call, sample, 4, 5.0)
                api_cpu = CpuMeter(settings, proc)
                for row in rows:
                    conc = row["concurrency"]
                    with_bare = workers == args.workers[0]  # bare next to the first API run
                    sides = {"api": Loop(), "bare": Loop()}
                    rngs = {"api": random.Random(conc), "bare": random.Random(conc)}
                    api_cpu.reset()
                    bare_cpu.reset()
                    block = args.duration / args.blocks
                    for _ in range(args.blocks):  # alternating blocks: drift hits both sides
                        api_cpu.start()
                        await closed_loop(api_call, sample, conc, block, sides["api"], rngs["api"])
                        api_cpu.stop()
                        if with_bare:
                            await asyncio.sleep(SETTLE_S)  # the API's deferred writes land first
                            bare_cpu.start()
                            await closed_loop(
                                bare_call, sample, conc, block, sides["bare"], rngs["bare"]
                            )
                            bare_cpu.stop()
                    api = sides["api"].summary()
                    api["cpu_ms_per_request"] = api_cpu.per_request_ms(api["n"])
                    if with_bare:
                        bare = sides["bare"].summary()
                        bare["cpu_ms_per_request"] = bare_cpu.per_request_ms(bare["n"])
                        row["bare"] = bare
                        row["p99_ratio_ci95"] = ratio_interval(sides["api"].lat, sides["bare"].lat)
                    row["api_by_workers"][str(workers)] = api
                    bare = row["bare"]
                    print(
                        f"w={workers} c={conc:3}  api {api['qps']:7.1f} qps p50 "
                        f"{api['p50_ms']:7.1f} p99 {api['p99_ms']:7.1f} | bare {bare['qps']:7.1f} "
                        f"qps p50 {bare['p50_ms']:7.1f} p99 {bare['p99_ms']:7.1f}",
                        file=sys.stderr,
                    )
            stop_serve(proc)
            proc = None
        for row in rows:  # the classic columns: the API with the first worker count
            row["api"] = row["api_by_workers"][str(args.workers[0])]
            row["p99_ratio"] = round((row["api"]["p99_ms"] or 0) / (row["bare"]["p99_ms"] or 1), 2)
        await os_client.close()
        return {
            "items": args.items,
            "k": args.k,
            "history_users": len(personal),
            "likes_per_user": args.likes,
            "surfaces": surfaces,
            "duration_s": args.duration,
            "blocks": args.blocks,
            "deadline_ms": settings.api_deadline_ms,
            "cpus": os.cpu_count(),
            "load_avg_1m": {
                "before": round(load_before[0], 2),
                "after": round(os.getloadavg()[0], 2),
            },
            "workers": args.workers,
            "levels": rows,
        }
    finally:
        if proc is not None:
            stop_serve(proc)
        if not (args.keep or args.reuse):
            sync_os.indices.delete(
                index=f"bench-api-{rid}-items*", ignore_unavailable=True, expand_wildcards="all"
            )
            mongo.drop_database(settings.mongo_db)
        sync_os.close()
        mongo.close()


def _serve(env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("opendisco")
    cmd = [str(exe), "serve", "--workers", str(workers), "--log-level", "info"]
    log = SERVE_LOG.open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.workers = workers  # type: ignore[attr-defined]
    return proc


async def _wait_ready(http: Any, base: str, proc: subprocess.Popen[bytes]) -> None:
    """Until every worker has finished its start-up and loaded its query encoder (in the
    background: each logs both once) and the server answers /readyz."""
    import aiohttp

    for _ in range(3000):
        log = SERVE_LOG.read_text(errors="replace")
        started = min(log.count("Application startup complete"), log.count(ENCODER_LOADED))
        if started >= proc.workers:  # type: ignore[attr-defined]
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
        if proc.poll() is not None:
            raise SystemExit(f"API process exited (log: {SERVE_LOG})")
        await asyncio.sleep(0.2)
    raise SystemExit(f"API not ready in 600 s (log: {SERVE_LOG})")


def _listener(port: int) -> int | None:
    """The pid listening on 127.0.0.1/0.0.0.0:``port`` (from /proc; None if not found)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
    return None


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (the serve parent and its uvicorn workers)."""
    parent: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU ms per answered request of the API processes, OpenSearch and MongoDB over a level
    (per-process /proc counters: other work on the machine does not count)."""

    def __init__(self, settings: Settings, api: subprocess.Popen[bytes] | None) -> None:
        from urllib.parse import urlsplit

        os_port = urlsplit(settings.opensearch_url).port or 9200
        mongo_port = urlsplit(settings.mongo_url.split(",")[0]).port or 27017
        self.groups = {
            "api": _tree(api.pid) if api else [],
            "opensearch": [p for p in [_listener(os_port)] if p],
            "mongo": [p for p in [_listener(mongo_port)] if p],
        }
        #: the engine's JVM threads (``jvm_threads``), when jcmd can attach to it
        self._engine = self.groups["opensearch"][0] if self.groups["opensearch"] else None
        self._pools = self._engine is not None and thread_cpu_ms(self._engine) is not None

    def reset(self) -> None:
        self._sum = dict.fromkeys(self.groups, 0.0)
        self._pool_sum: Counter[str] = Counter()

    def start(self) -> None:
        # the thread dump first: the process counters then exclude the dump's own cost
        self._threads0 = thread_cpu_ms(self._engine) if self._pools and self._engine else None
        self._t0 = {g: _cpu_s(p) for g, p in self.groups.items()}

    def stop(self) -> None:
        for g, p in self.groups.items():
            self._sum[g] += _cpu_s(p) - self._t0[g]
        if self._threads0 is not None and self._engine:
            after = thread_cpu_ms(self._engine)
            if after is not None:
                self._pool_sum.update(by_pool(self._threads0, after))

    def per_request_ms(self, n: int) -> dict[str, Any]:
        """CPU ms per request over the blocks between ``reset`` and now (the engine's also by
        thread pool, the biggest first, when jcmd attached)."""
        out: dict[str, Any] = {
            g: round(1000 * self._sum[g] / max(1, n), 1) for g, p in self.groups.items() if p
        }
        if self._pool_sum:
            out["opensearch_pools"] = {
                pool: round(ms / max(1, n), 2)
                for pool, ms in self._pool_sum.most_common()
                if ms / max(1, n) >= 0.05
            }
        return out


def _load(res: dict[str, Any]) -> str:
    load = res.get("load_avg_1m")
    return f"{load['before']:.1f} → {load['after']:.1f}" if load else "not recorded"


def _cpu_lines(levels: list[dict[str, Any]]) -> list[str]:
    """The CPU table: ms per answered request by process, and the engine's by thread pool
    (``jvm_threads``) on each side, so the API's extra engine work is named."""
    if not all(r["api"].get("cpu_ms_per_request") for r in levels):
        return []
    pools = sorted(
        {p for r in levels for side in (r["api"], r["bare"]) for p in _pools(side)},
        key=lambda p: -max(_pools(r["api"]).get(p, 0.0) for r in levels),
    )[:6]
    head = " | ".join(f"engine {p} API / bare" for p in pools)
    out = [
        "",
        "CPU ms per answered request (per-process `/proc` counters over the level's blocks; "
        "the engine's by thread pool from `jcmd Thread.print`, `bench/jvm_threads.py`; the "
        "bare side's client runs in this load generator, not counted):",
        "",
        "| concurrency | API process | API engine / FerretDB | bare engine / FerretDB"
        + (f" | {head}" if pools else "")
        + " |",
        "|---|---|---|---" + "|---" * len(pools) + "|",
    ]
    for r in levels:
        a, b = r["api"]["cpu_ms_per_request"], r["bare"].get("cpu_ms_per_request") or {}
        cells = [
            f"{_pools(r['api']).get(p, 0.0):.2f} / {_pools(r['bare']).get(p, 0.0):.2f}"
            for p in pools
        ]
        row = [
            str(r["concurrency"]),
            str(a.get("api", "–")),
            f"{a.get('opensearch', '–')} / {a.get('mongo', '–')}",
            f"{b.get('opensearch', '–')} / {b.get('mongo', '–')}",
            *cells,
        ]
        out.append("| " + " | ".join(row) + " |")
    return out


def _pools(side: dict[str, Any]) -> dict[str, float]:
    return (side.get("cpu_ms_per_request") or {}).get("opensearch_pools") or {}


def write_readme(res: dict[str, Any]) -> None:
    lines = [
        "<!-- api -->",
        "## api: Discovery API vs bare candidate queries",
        "",
        f"`bench/api.py` ({res['items']} items, k={res['k']}, closed loop {res['duration_s']} s "
        f"per side and level in {res.get('blocks', 1)} alternating API/bare blocks, "
        f"{res['cpus']} CPUs shared by OpenSearch, FerretDB, the API and the load "
        f"generator; 1-min load average {_load(res)} during the run). "
        "API = `GET /v1/users/{id}/recommendations` through uvicorn (auth, rate "
        "limit, breaker, user state, features, rerank, impression log) for "
        f"{res.get('history_users', '?')} members with {res.get('likes_per_user', '?')} likes "
        "each (seeded through the event path, so every request is personal: "
        f"{', '.join(res.get('surfaces', []))}); bare = the same members' candidate `_msearch` "
        "alone — the exact request the API sends (`Discovery.plan`: user vectors, exclusions, "
        "graph neighbours), sent from this process.",
        "",
        "| concurrency | API QPS | API p50 ms | API p99 ms | API degraded "
        "| bare QPS | bare p50 ms | bare p99 ms | p50 ratio | p99 ratio (95% CI) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["levels"]:
        a, b = r["api"], r["bare"]
        lines.append(
            f"| {r['concurrency']} | {a['qps']} | {a['p50_ms']} | {a['p99_ms']} | "
            f"{100 * a['degraded'] / max(1, a['n']):.0f}% | {b['qps']} | "
            f"{b['p50_ms']} | {b['p99_ms']} | {r.get('p50_ratio', '–')} | {r['p99_ratio']}"
            + (" ({}–{})".format(*r["p99_ratio_ci95"]) if r.get("p99_ratio_ci95") else "")
            + " |"
        )
    if res.get("workers"):
        lines += [
            "",
            "Worker processes (`opendisco serve --workers N`), same members and levels, same "
            "run (the bare column above ran next to the first worker count):",
            "",
            "| concurrency | "
            + " | ".join(
                f"{w} worker{'s' if w > 1 else ''} QPS / p50 / p99 ms" for w in res["workers"]
            )
            + " | bare QPS / p50 / p99 ms |",
            "|---|" + "---|" * (len(res["workers"]) + 1),
        ]
        for r in res["levels"]:
            cells = [r["api_by_workers"][str(w)] for w in res["workers"]] + [r["bare"]]
            lines.append(
                f"| {r['concurrency']} | "
                + " | ".join(
                    f"{c['qps']} / {c['p50_ms']} / {c['p99_ms']}"
                    + (
                        f" ({100 * c['degraded'] / max(1, c['n']):.0f}% degraded)"
                        if c["degraded"]
                        else ""
                    )
                    for c in cells
                )
                + " |"
            )
        peak, ratio = res["peak_qps"], res["peak_ratio"]
        lines += [
            "",
            "QPS at saturation (best pipeline-served QPS over the levels): bare "
            f"{peak['bare']}; "
            + "; ".join(
                f"API {w} worker{'s' if w > 1 else ''} {peak[f'api_w{w}']} "
                f"({ratio[f'api_w{w}']}× bare)"
                for w in res["workers"]
            )
            + " (target ≥ 0.9× bare).",
        ]
    lines += _cpu_lines(res["levels"])
    comp = res.get("comparable_levels", [])
    lines += [
        "",
        f"Saturation (pipeline-served QPS grows < 10% from the next level on): API at "
        f"concurrency {res['saturation']['api']}, bare at {res['saturation']['bare']}. On the "
        f"levels the pipeline served (< 1% degraded: c={', '.join(map(str, comp))}) the p99 "
        f"ratio is {res.get('median_p99_ratio')} median, {res.get('max_p99_ratio')} at worst "
        f"(target ≤ 1.5); p50 ratio {res.get('median_p50_ratio')} median. "
        + (
            f"From c={res['shedding_from']} on the API sheds load: requests past the "
            f"{res.get('deadline_ms', 800)} ms deadline (and then the open breaker) get the "
            "flagged trending fallback, so that row compares the fallback with the engine. "
            if res.get("shedding_from")
            else ""
        ),
        "<!-- /api -->",
    ]
    text = README.read_text() if README.exists() else "# Benchmarks\n\n"
    # a hand-written reading of the latest run survives re-rendering
    kept = re.search(r"<!-- api-reading -->.*?<!-- /api-reading -->\n?", text, flags=re.S)
    if kept:
        lines.insert(-1, "")
        lines.insert(-1, kept.group(0).rstrip("\n"))
    section = "\n".join(lines) + "\n"
    if "<!-- api -->" in text:
        text = re.sub(r"<!-- api -->.*?<!-- /api -->\n?", section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="100k items")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument(
        "--duration", type=float, default=None, help=f"s per level (default {DURATION_S:g})"
    )
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument(
        "--blocks", type=int, default=BLOCKS, help="alternating API/bare blocks per level"
    )
    ap.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=list(LEVELS))
    ap.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="API worker counts to run (opendisco serve --workers), each on the same levels",
    )
    ap.add_argument("--history-users", type=int, default=500, help="members given likes")
    ap.add_argument("--likes", type=int, default=5, help="likes per member with history")
    ap.add_argument("--keep", action="store_true", help="keep the index and database")
    ap.add_argument("--render", action="store_true", help="only rewrite the README section")
    ap.add_argument("--reuse", default=None, help="namespace id of a kept run (skips the build)")
    args = ap.parse_args()
    args.items = args.items or (100_000 if args.full else 20_000)
    args.duration = args.duration or DURATION_S
    if args.render:  # re-render the README section from the stored results
        res = summarise(json.loads(RESULTS.read_text()))
        RESULTS.write_text(json.dumps(res, indent=2) + "\n")
        write_readme(res)
        return
    res = summarise(asyncio.run(run(args)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    write_readme(res)
    print(json.dumps(res["saturation"]), file=sys.stderr)


if __name__ == "__main__":
    main()
