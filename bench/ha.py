"""Node loss under load: the Discovery API over a 3-node OpenSearch cluster with replicas.

    $(./dev env)/bin/python bench/ha.py              # 20k items, c=4, 20 s steady, 30 s down
    $(./dev env)/bin/python bench/ha.py --full       # 100k items
    $(./dev env)/bin/python bench/ha.py --existing   # a local cluster already up (settings)

A private cluster (``opendisco.services.scratch_cluster``: its own ports, state dir and
cluster name, 1g heap per node; the shared servers are never touched) gets the bench/api
marketplace (``--items``, hashed bag-of-words vectors, members with likes so requests are
personal) with 1 replica per shard (3 primaries). The API runs under uvicorn in a subprocess
(``opendisco serve``, its client given every node); ``--concurrency`` workers request
recommendations the whole time, closed loop while warming up and calibrating the capacity,
then paced to ``--load-share`` of it (bounded load: without it the fast degraded answers
become a request storm that starves the 2 cores the nodes need). Each round: ``--steady``
seconds, SIGKILL one node, ``--down`` seconds with it dead, restart it (``services up``
starts only the missing node) and wait for green. Rounds: a data node, then the elected
cluster manager (also a data node: its loss adds an election); ``--victims
data,manager,hang`` adds a data node hung with SIGSTOP for ``--down`` seconds, then SIGCONT
(a node that accepts connections and never answers). Reported per round: the share of
non-degraded answers and p99 while the node is down vs steady, the same over the recovery
(restart → green: the restarting JVM and shard recovery share the 2 cores with the API), 5xx
and other errors, and the time back to green. Also the primary store size per 100k items.
Results: bench/results/ha.json and bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from opensearchpy import AsyncOpenSearch

from api import _free_port, _pct, build, closed_loop, personal_requests
from opendisco import clients, index_templates, load_settings
from opendisco._settings import Settings
from opendisco.services import OpenSearchService, scratch_cluster

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "ha.json"
README = ROOT / "README.md"


@dataclass
class Answer:
    start: float
    end: float
    status: int
    degraded: bool


def window(answers: list[Answer], lo: float, hi: float) -> dict[str, Any]:
    """Figures of the answers that started in ``[lo, hi)``."""
    got = [a for a in answers if lo <= a.start < hi]
    ok = [a for a in got if a.status == 200]
    lat = [(a.end - a.start) * 1000 for a in ok]
    return {
        "n": len(got),
        "seconds": round(hi - lo, 1),
        "qps": round(len(got) / max(hi - lo, 1e-9), 1),
        "statuses": dict(Counter(str(a.status) for a in got)),
        "status_5xx": sum(a.status >= 500 for a in got),
        "errors": sum(a.status != 200 for a in got),
        "non_degraded_share": round(sum(not a.degraded for a in ok) / max(1, len(got)), 4),
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p99_ms": round(_pct(lat, 0.99), 1) if lat else None,
    }


async def load(
    base: str,
    key: str,
    users: list[str],
    conc: int,
    k: int,
    answers: list[Answer],
    errors: list[str],
    stop: Any,
    pace: dict[str, float],
) -> None:
    """``conc`` workers, each sending its next request when its last one is answered, no
    earlier than ``pace["interval"]`` s after the previous send once that is set (bounded
    load: a fast degraded answer does not turn into more requests)."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=conc), headers={"X-API-Key": key}
    ) as http:

        async def worker(i: int) -> None:
            n = i
            next_at = time.monotonic()
            while not stop.is_set():
                interval = pace.get("interval", 0.0)
                if interval:
                    next_at = max(next_at + interval, time.monotonic() - interval)
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                n += conc
                url = f"{base}/v1/users/{users[n % len(users)]}/recommendations?k={k}"
                t0 = time.monotonic()
                try:
                    async with http.get(url) as r:
                        status = r.status
                        body = await r.json(content_type=None)
                        degraded = bool(body["degraded"]) if status == 200 else True
                        if status != 200 and len(errors) < 5:
                            errors.append(f"{status} {str(body)[:300]}")
                except aiohttp.ClientError as exc:
                    status, degraded = 0, True  # the API itself unreachable
                    if len(errors) < 5:
                        errors.append(repr(exc))
                answers.append(Answer(t0, time.monotonic(), status, degraded))

        await asyncio.gather(*(worker(i) for i in range(conc)))


async def warm(answers: list[Answer], seconds: float) -> None:
    """Load for ``seconds``, then on until 20 answers in a row were served by the pipeline
    (the fallback's first refresh and the encoder's warm-up are not steady state)."""
    await asyncio.sleep(seconds)
    for _ in range(600):
        tail = answers[-20:]
        if len(tail) == 20 and not any(a.degraded for a in tail):
            return
        await asyncio.sleep(0.5)
    raise SystemExit("the API never served 20 non-degraded answers in a row: overloaded?")


async def calibrate(answers: list[Answer], seconds: float, share: float, conc: int) -> dict:
    """Closed-loop capacity over ``seconds`` (non-degraded answers per second), then pace
    the workers to ``share`` of it."""
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    got = [a for a in answers if a.start >= t0 and a.status == 200 and not a.degraded]
    capacity = len(got) / seconds
    if not capacity:
        raise SystemExit("no non-degraded answer while calibrating: overloaded?")
    return {
        "capacity_qps": round(capacity, 1),
        "offered_qps": round(share * capacity, 1),
        "interval": conc / (share * capacity),
    }


async def watch_health(admin: Any, timeline: list[tuple[float, str]], stop: Any) -> None:
    """Cluster status every 0.5 s (yellow while replicas are missing)."""
    while not stop.is_set():
        try:
            status = (await admin.cluster.health(request_timeout=5))["status"]
        except Exception as exc:  # a bench keeps watching through any failure
            status = f"error: {type(exc).__name__}"
        timeline.append((time.monotonic(), status))
        await asyncio.sleep(0.5)


async def watch_removal(svc: OpenSearchService, victim: Any, stop: Any) -> float | None:
    """When the live nodes' cluster state stops counting the hung ``victim`` (monotonic s):
    asked of the live nodes only (the status watcher's client also asks the hung node, and
    its timeouts there read as "not green" long before the cluster drops the node)."""
    live = [n.url for n in svc.nodes if n is not victim]
    client = AsyncOpenSearch(hosts=live, timeout=3)
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a bench keeps watching through failures
                health = await client.cluster.health(request_timeout=3)
                if health["number_of_nodes"] < len(svc.nodes):
                    return time.monotonic()
            await asyncio.sleep(0.5)
    finally:
        await client.close()
    return None


async def one_round(
    svc: OpenSearchService, admin: Any, victim_kind: str, args: argparse.Namespace, ctx: dict
) -> dict[str, Any]:
    answers: list[Answer] = ctx["answers"]
    timeline: list[tuple[float, str]] = ctx["timeline"]
    manager = (await admin.cat.cluster_manager(format="json"))[0]["node"]
    names = [n.name for n in svc.nodes]
    victim_name = manager if victim_kind == "manager" else next(n for n in names if n != manager)
    victim = next(n for n in svc.nodes if n.name == victim_name)
    hang = victim_kind == "hang"  # SIGSTOP: the node accepts connections and never answers
    t_steady = time.monotonic()
    await asyncio.sleep(args.steady)
    t_kill = time.monotonic()
    svc.signal(victim, signal.SIGSTOP if hang else signal.SIGKILL)
    print(f"  {'SIGSTOP' if hang else 'SIGKILL'} {victim_name} ({victim_kind})", file=sys.stderr)
    stop_watch = asyncio.Event()
    removal = asyncio.create_task(watch_removal(svc, victim, stop_watch)) if hang else None
    await asyncio.sleep(args.down)
    t_restart = time.monotonic()
    stop_watch.set()
    t_removed = await removal if removal is not None else None
    if hang:
        svc.signal(victim, signal.SIGCONT)
    await asyncio.to_thread(svc.up)  # starts only the killed node, waits until it joined
    t_joined = time.monotonic()
    health = await admin.cluster.health(
        wait_for_status="green", timeout="600s", request_timeout=610
    )
    t_green = time.monotonic()
    print(f"  green {t_green - t_restart:.1f}s after the restart", file=sys.stderr)
    await asyncio.sleep(args.tail)
    t_end = time.monotonic()
    first_yellow = next((t for t, s in timeline if t >= t_kill and s != "green"), None)
    steady = window(answers, t_steady, t_kill)
    down = window(answers, t_kill, t_restart)
    recovery = window(answers, t_restart, t_green)
    for w in (down, recovery):
        w["p99_vs_steady"] = (
            round(w["p99_ms"] / steady["p99_ms"], 2) if w["p99_ms"] and steady["p99_ms"] else None
        )
    return {
        "victim": victim_name,
        "victim_kind": victim_kind,
        "steady": steady,
        "node_down": down,
        "recovery": recovery,
        "after": window(answers, t_green, t_end),
        "status_after_kill": "yellow" if first_yellow else "green",
        "removed_after_s": round(t_removed - t_kill, 1) if t_removed else None,
        "after_removal": window(answers, t_removed, t_restart) if t_removed else None,
        "yellow_after_kill_s": round(first_yellow - t_kill, 1) if first_yellow else None,
        "restart_to_joined_s": round(t_joined - t_restart, 1),
        "restart_to_green_s": round(t_green - t_restart, 1),
        "kill_to_green_s": round(t_green - t_kill, 1),
        "green": health["status"] == "green",
    }


async def shard_sweep(
    s: Settings, admin: Any, plans: dict[str, Any], counts: list[int], seconds: float
) -> list[dict[str, Any]]:
    """The same personal candidate ``_msearch`` (the API's, bare) against copies of the
    items index with 1, 3, ... primaries (0 replicas, spread over the nodes by the cluster):
    how query latency depends on the shard count at this size."""
    from opensearchpy.helpers import async_reindex

    from opendisco.queries import generate_candidates

    live = next(iter(await admin.indices.get_alias(name=s.index_alias)))
    users = [{"_id": u} for u in plans]

    async def call(user: dict[str, Any]) -> bool:
        return bool((await generate_candidates(admin, s, plans[user["_id"]])).degraded)

    async def point_alias(index: str) -> None:
        await admin.indices.update_aliases(
            body={
                "actions": [
                    {"remove": {"index": "*", "alias": s.index_alias}},
                    {"add": {"index": index, "alias": s.index_alias}},
                ]
            }
        )

    rows = []
    try:
        for n in counts:
            target = f"{s.index_alias}-shards{n}"
            shape = s.model_copy(update={"index_shards": n, "index_replicas": 0})
            await admin.indices.create(
                index=target, body=index_templates.render("items", shape), request_timeout=120
            )
            t0 = time.perf_counter()
            # client-side copy: the reindex module is not among the modules Maven serves
            await async_reindex(
                admin, live, target, chunk_size=250, bulk_kwargs={"request_timeout": 600}
            )
            await admin.indices.refresh(index=target)
            copy_s = time.perf_counter() - t0
            await admin.indices.forcemerge(index=target, max_num_segments=1, request_timeout=7200)
            await point_alias(target)
            await closed_loop(call, users, 2, 3.0)  # warm caches
            row: dict[str, Any] = {"shards": n, "copy_s": round(copy_s, 1)}
            for conc in (1, 4):
                row[f"c{conc}"] = await closed_loop(call, users, conc, seconds)
            print(f"  shards={n}: {row}", file=sys.stderr)
            rows.append(row)
            await point_alias(live)
            await admin.indices.delete(index=target)
    finally:
        await point_alias(live)
    return rows


async def run_bench(settings: Settings, svc: OpenSearchService, args: argparse.Namespace) -> dict:
    from opendisco.api import create_key

    rid = uuid.uuid4().hex[:6]
    port = _free_port()
    overrides = {
        "index_alias": f"bench-ha-{rid}-items",
        "mongo_db": f"bench_ha_{rid}",
        "api_port": port,
        "api_rate_limit": 1e9,
        "api_rate_burst": 1e9,
        "api_max_concurrency": 256,
        "api_deadline_ms": args.deadline_ms or settings.api_deadline_ms,
    }
    s = settings.model_copy(update=overrides)
    env = {
        **os.environ,
        **{f"OPENDISCO_{k.upper()}": str(v) for k, v in overrides.items()},
        "OPENDISCO_OPENSEARCH_URL": s.opensearch_url,
        "OPENDISCO_OPENSEARCH_NODES": str(s.opensearch_nodes),
    }
    mongo = clients.mongo(s)
    admin = clients.async_opensearch(s)
    proc: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        users = await build(s, args.items)
        build_s = time.perf_counter() - t0
        plans = await personal_requests(s, users, args.history_users, args.likes, args.k)
        await admin.indices.refresh(index=f"{s.index_alias}*")
        stats = await admin.cat.indices(
            index=f"{s.index_alias}-v*", format="json", bytes="b", h="index,pri,rep,pri.store.size"
        )
        primary_bytes = sum(int(x["pri.store.size"]) for x in stats)
        sweep = (
            await shard_sweep(s, admin, plans, args.shard_counts, args.sweep_seconds)
            if args.shard_counts
            else []
        )
        key, _ = create_key(mongo[s.mongo_db], "bench-ha", ["read"])
        exe = Path(sys.executable).with_name("opendisco")
        proc = subprocess.Popen(
            [str(exe), "serve", "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(900):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                if proc.poll() is not None:
                    raise SystemExit("API process exited")
                await asyncio.sleep(0.2)
        load_before = os.getloadavg()
        answers: list[Answer] = []
        errors: list[str] = []
        timeline: list[tuple[float, str]] = []
        stop = asyncio.Event()
        users_ids = list(plans)
        pace: dict[str, float] = {}
        tasks = [
            asyncio.create_task(
                load(base, key, users_ids, args.concurrency, args.k, answers, errors, stop, pace)
            ),
            asyncio.create_task(watch_health(admin, timeline, stop)),
        ]
        try:
            await warm(answers, args.warmup)
            paced = {"capacity_qps": None, "offered_qps": None}
            if args.load_share:
                paced = await calibrate(answers, args.calibrate, args.load_share, args.concurrency)
                pace["interval"] = paced.pop("interval")
                print(f"  pacing: {paced}", file=sys.stderr)
            rounds = []
            for kind in args.victims:
                print(f"round: {kind}", file=sys.stderr)
                rounds.append(
                    await one_round(
                        svc, admin, kind, args, {"answers": answers, "timeline": timeline}
                    )
                )
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "items": args.items,
            "k": args.k,
            "concurrency": args.concurrency,
            "load_share": args.load_share,
            **paced,
            "nodes": len(svc.nodes),
            "heap": s.heap,
            "shards": s.shards,
            "replicas": s.replicas,
            "deadline_ms": s.api_deadline_ms,
            "build_s": round(build_s, 1),
            "primary_store_bytes": primary_bytes,
            "primary_mb_per_100k_items": round(primary_bytes / 1e6 * 100_000 / args.items, 1),
            "cpus": os.cpu_count(),
            "load_avg_1m": {
                "before": round(load_before[0], 2),
                "after": round(os.getloadavg()[0], 2),
            },
            "total_5xx": sum(a.status >= 500 for a in answers),
            "total_answers": len(answers),
            "first_errors": errors,
            "rounds": rounds,
            "shard_sweep": sweep,
        }
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(Exception):
            await admin.indices.delete(
                index=f"{s.index_alias}*", ignore_unavailable=True, expand_wildcards="all"
            )
        await admin.close()
        mongo.drop_database(s.mongo_db)
        mongo.close()


def _row(name: str, w: dict[str, Any]) -> str:
    ratio = w.get("p99_vs_steady")
    return (
        f"| {name} | {w['seconds']} | {w['n']} | {100 * w['non_degraded_share']:.2f}% | "
        f"{w['status_5xx']} | {w['errors']} | {w['p50_ms']} | {w['p99_ms']} | "
        f"{ratio if ratio is not None else '–'} |"
    )


def _offered(res: dict[str, Any]) -> str:
    if not res.get("load_share"):
        return "closed loop (unbounded)"
    return (
        f"paced to {res['load_share']:.0%} of the calibrated closed-loop capacity "
        f"({res['capacity_qps']} → {res['offered_qps']} QPS)"
    )


def write_readme(res: dict[str, Any]) -> None:
    load = res["load_avg_1m"]
    lines = [
        "<!-- ha -->",
        "## ha: node loss under load",
        "",
        f"`bench/ha.py` ({res['items']} items, {res['nodes']}-node cluster on loopback, "
        f"{res['shards']} primaries × {res['replicas']} replica, heap {res['heap']} per node; "
        f"API under uvicorn, {res['concurrency']} workers, k={res['k']}, deadline "
        f"{res['deadline_ms']} ms, {_offered(res)}; {res['cpus']} CPUs shared by the 3 nodes, "
        f"the API, FerretDB and the load generator; 1-min load average {load['before']:.1f} → "
        f"{load['after']:.1f}). Each round: steady, SIGKILL one node, keep it dead, restart "
        "it with `services up`, wait for green. *Down* = killed → restart; *recovery* = "
        "restart → green (the "
        "restarting JVM and the shard recovery compete for the 2 cores with the API).",
        "",
        "| round / window | s | answers | non-degraded | 5xx | non-200 | p50 ms | p99 ms "
        "| p99 / steady |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rounds"]:
        who = f"{r['victim_kind']} ({r['victim']})"
        lines += [
            _row(f"{who}: steady", r["steady"]),
            _row(f"{who}: node down", r["node_down"]),
            _row(f"{who}: recovery", r["recovery"]),
        ]
    lines.append("")
    for r in res["rounds"]:
        if r["victim_kind"] == "hang":
            after = r.get("after_removal")
            seen = (
                f"the live nodes dropped it {r['removed_after_s']} s after the SIGSTOP; "
                f"from then to the SIGCONT {100 * after['non_degraded_share']:.1f}% "
                f"non-degraded ({after['n']} answers)"
                if after
                else "the cluster did not drop the node while it was hung"
            )
            lines.append(
                f"- hang (SIGSTOP): {seen}; after SIGCONT green in {r['restart_to_green_s']} s."
            )
            continue
        lines.append(
            f"- {r['victim_kind']} killed: cluster {r['status_after_kill']} "
            f"{r['yellow_after_kill_s']} s after the kill; restarted node joined after "
            f"{r['restart_to_joined_s']} s, green {r['restart_to_green_s']} s after the restart "
            f"({r['kill_to_green_s']} s after the kill)."
        )
    lines += [
        f"- 5xx over the whole run: {res['total_5xx']} of {res['total_answers']} answers. "
        "Targets: 0 5xx, ≥ 99% non-degraded through a single-node loss, p99 during the loss "
        "≤ 2× steady.",
        f"- Index size: {res['primary_mb_per_100k_items']} MB of primary store per 100k items "
        "(384-d content + 32-d behaviour vectors, text, attributes; × (1 + replicas) on disk).",
    ]
    if res.get("shard_sweep"):
        lines += [
            "",
            f"Query latency by primary count ({res['items']} items, 0 replicas, the personal "
            "candidate `_msearch` of the API sent bare, closed loop):",
            "",
            "| primaries | c=1 p50 ms | c=1 p99 ms | c=4 QPS | c=4 p50 ms | c=4 p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for row in res["shard_sweep"]:
            one, four = row["c1"], row["c4"]
            lines.append(
                f"| {row['shards']} | {one['p50_ms']} | {one['p99_ms']} | {four['qps']} | "
                f"{four['p50_ms']} | {four['p99_ms']} |"
            )
    text = README.read_text() if README.exists() else "# Benchmarks\n\n"
    kept = re.search(r"<!-- ha-reading -->.*?<!-- /ha-reading -->\n?", text, flags=re.S)
    if kept:
        lines += ["", kept.group(0).rstrip("\n")]
    lines.append("<!-- /ha -->")
    section = "\n".join(lines) + "\n"
    if "<!-- ha -->" in text:
        text = re.sub(r"<!-- ha -->.*?<!-- /ha -->\n?", section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="100k items")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--deadline-ms", type=int, default=None, help="API deadline (settings')")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--calibrate", type=float, default=15.0, help="closed-loop capacity (s)")
    ap.add_argument(
        "--load-share",
        type=float,
        default=0.5,
        help="offered load as a share of the calibrated capacity (0: closed loop, unbounded)",
    )
    ap.add_argument("--steady", type=float, default=20.0)
    ap.add_argument("--down", type=float, default=30.0, help="seconds the node stays dead")
    ap.add_argument("--tail", type=float, default=5.0, help="seconds of load after green")
    ap.add_argument(
        "--victims",
        type=lambda v: v.split(","),
        default=["data", "manager"],
        help="rounds: data, manager (SIGKILL, restart), hang (SIGSTOP, SIGCONT)",
    )
    ap.add_argument("--history-users", type=int, default=500, help="members given likes")
    ap.add_argument("--likes", type=int, default=5, help="likes per member with history")
    ap.add_argument(
        "--shard-counts",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[1, 3, 6],
        help="primaries of the index copies timed before the rounds ('' for none)",
    )
    ap.add_argument("--sweep-seconds", type=float, default=10.0)
    ap.add_argument("--heap", default=None, help="per-node heap (default: the settings')")
    ap.add_argument("--existing", action="store_true", help="use the running local cluster")
    ap.add_argument("--render", action="store_true", help="only rewrite the README section")
    args = ap.parse_args()
    args.items = args.items or (100_000 if args.full else 20_000)
    if args.render:
        write_readme(json.loads(RESULTS.read_text()))
        return
    base = load_settings()
    if args.existing:
        if base.opensearch_nodes < 2:
            raise SystemExit("--existing needs a local cluster (OPENDISCO_OPENSEARCH_NODES>1)")
        svc = OpenSearchService(base)
        svc.up()
        res = asyncio.run(run_bench(base, svc, args))
    else:
        heap = args.heap or base.model_copy(update={"opensearch_nodes": 3}).heap
        with scratch_cluster(base, name="bench-ha", nodes=3, heap=heap, echo=print) as (s, svc):
            res = asyncio.run(run_bench(s, svc, args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    write_readme(res)
    print(json.dumps(res["rounds"], indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
