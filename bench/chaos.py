"""Combined-fault soak: overlapping faults against a served, synced namespace, hard rules and
exactly-once judged against ground truth. A script run by hand, not part of CI.

For ``--seconds`` N, at once: clients asking for members' recommendations and posting events
(likes, hides — a hide blocks the owner both ways —, passes, impressions; retries and
concurrent duplicates reuse the ids), a client posting odd event payloads (bench/chaos_odd.py),
a MongoDB writer changing members (availability, two-sided preferences, soft deletes, hard
deletes of profiles and of members' ``users`` documents, some written again at a higher
version) and inserting invalid documents, a sync worker, and a seeded fault
scheduler overlapping: the engine's traffic paused / cut (TCP proxy), 429 storms (HTTP proxy),
the store's traffic paused / cut (TCP proxy), kill -9 of an API worker (``opendisco serve
--workers 2``) or of the whole API (its supervisor; started again once its workers stopped,
``--api-kills`` a run: bench/chaos_api.py), kill -9 of the sync worker (restarted). The
shared servers are never touched: every fault is on a proxy of this run's own, in its own
namespace (``chaos<tag>``).

Invariants (bench/chaos_load.py judges each answer as it comes):
1. no 200 page shows the viewer's own profile, a member blocked either way, a profile the
   viewer liked / hid / passed, or a profile unavailable / deleted (soft or hard) / outside the
   two-sided preferences, nor any profile to a member whose ``users`` document is gone — each
   only when acknowledged before the request was sent (a change in flight is not judged) —,
   nor an item served past its cap after the documented slack;
2. no 5xx but 503 with Retry-After, no 4xx but 429 with it (an odd payload: a 4xx or its
   events rejected with a reason), no request hanging 30 s;
3. once the faults stop: every event posted is stored and applied once (inbound likes per
   profile, likes per member, blocks), ``opendisco verify`` agrees with MongoDB, every
   invalid document is in dead letters with a reason, no stored event is left unapplied but
   those ``dropped`` (their profile deleted from MongoDB), none of a refused batch is stored.

    nice -n 10 $(./dev env | tail -1)/bin/python bench/chaos.py --seconds 150 --seed 1

Results: bench/results/chaos.json (the last run); the runs are in bench/README.md, *chaos*.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "api")]

from api_support import free_port  # noqa: E402
from chaos_api import Api  # noqa: E402
from chaos_load import Truth, cap_overruns, client_loop, post_batch, writer_loop  # noqa: E402
from chaos_odd import odd_loop, stored_checks  # noqa: E402
from event_counts import counters  # noqa: E402
from http_faults import FaultyHttpProxy  # noqa: E402
from tcp_faults import TcpProxy  # noqa: E402

from opendisco import clients, load_settings  # noqa: E402
from opendisco._settings import Settings  # noqa: E402
from opendisco.api import create_key  # noqa: E402
from opendisco.ingest import generate_marketplace, write_sample  # noqa: E402
from opendisco.ingest._reindex import reindex  # noqa: E402
from opendisco.signals import BlockStore, UserStateStore  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "chaos.json"
OPENDISCO = Path(sys.executable).with_name("opendisco")
KINDS = ("engine_pause", "engine_cut", "storm_429", "store_pause", "store_cut",
         "kill_api_worker", "kill_sync", "kill_api")  # fmt: skip
GROUP = {"engine_pause": "engine", "engine_cut": "engine", "store_pause": "store",
         "store_cut": "store", "kill_api_worker": "api", "kill_api": "api"}  # fmt: skip


class LoopThread:
    """An event loop on its own thread for the TCP proxies (the load's loop may stall)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def call(self, fn: Any) -> None:
        self.loop.call_soon_threadsafe(fn)


def _tcp(lt: LoopThread, url: str, default_port: int) -> TcpProxy:
    u = urlsplit(url.split(",")[0])
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or default_port)
    lt.run(proxy.start())
    return proxy


def _env(s: Settings, state: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OPENDISCO_OPENSEARCH_URL": s.opensearch_url,
        "OPENDISCO_MONGO_URL": s.mongo_url,
        "OPENDISCO_MONGO_DB": s.mongo_db,
        "OPENDISCO_INDEX_ALIAS": s.index_alias,
        "OPENDISCO_STATE_DIR": str(state),
        "OPENDISCO_EXPLORE_RATE": "0",
        **extra,
    }


class Sync:
    """``opendisco sync`` as a child process, restarted after each kill -9."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.proc = env, log, None
        self.start()

    def start(self) -> None:
        cmd = [str(OPENDISCO), "sync"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("ab"))  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


async def fault(kind: str, dur: float, ctx: dict[str, Any]) -> None:
    """One fault of ``kind`` for ``dur`` seconds."""
    lt, eng, store, http = ctx["lt"], ctx["engine"], ctx["store"], ctx["http"]
    ctx["counts"][kind] += 1
    ctx["log"].append((round(time.monotonic() - ctx["t0"], 1), kind, round(dur, 1)))
    if kind in ("engine_pause", "store_pause"):
        proxy = eng if kind == "engine_pause" else store
        lt.call(proxy.pause)
        await asyncio.sleep(dur)
        lt.run(proxy.resume())
    elif kind in ("engine_cut", "store_cut"):
        proxy = eng if kind == "engine_cut" else store
        lt.run(proxy.kill())
        await asyncio.sleep(dur)
        lt.run(proxy.resume())
    elif kind == "storm_429":
        if ctx["rng"].random() < 0.5:
            http.statuses = (429,)
            http.failing = True
        else:  # a storm on the searches only, or on the writes only
            part = ctx["rng"].choice(("_msearch", "_bulk", "_update"))
            http.fail_if = lambda method, path: part in path
        await asyncio.sleep(dur)
        http.failing, http.fail_if = False, None
    elif kind == "kill_api_worker":  # one of two workers up: never the last one serving
        if not ctx["api"].kill_worker(ctx["rng"]):
            ctx["counts"][kind] -= 1
            ctx["counts"]["kill_api_worker_skipped"] += 1
    elif kind == "kill_api":  # the whole API, ``--api-kills`` times a run at most
        if ctx["counts"][kind] > ctx["api_kills"]:
            ctx["counts"][kind] -= 1
            ctx["counts"]["kill_api_skipped"] += 1
            return
        stopped, down, orphans = await asyncio.to_thread(ctx["api"].kill_and_restart)
        ctx["api_down_s"].append(round(down, 1))
        ctx["api_stopped_s"].append(round(stopped, 1))
        if orphans:
            ctx["truth"].violate("orphaned_workers", orphans)
    elif kind == "kill_sync":
        ctx["sync"].kill()
        await asyncio.sleep(dur / 2)
        ctx["sync"].start()


async def scheduler(ctx: dict[str, Any], stop: asyncio.Event) -> None:
    """Start a fault every 1–4 s, overlapping the ones running (one at a time per proxy)."""
    rng, running = ctx["rng"], set()
    busy: set[str] = set()
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        kind, dur = rng.choice(KINDS), rng.uniform(1.0, 8.0)
        group = GROUP.get(kind, kind)
        sync = ctx["sync"].proc
        if "kill_sync" not in busy and sync.poll() is not None:  # it exited by itself
            ctx["truth"].violate("sync_exited", sync.returncode)
            ctx["sync"].start()
        if group in busy or stop.is_set():
            continue
        busy.add(group)
        task = asyncio.ensure_future(fault(kind, dur, ctx))
        task.add_done_callback(lambda t, g=group: busy.discard(g))
        running.add(task)
    await asyncio.gather(*running, return_exceptions=True)


def verify_until_ok(direct: dict[str, str], timeout: float) -> tuple[bool, str, float]:
    """``opendisco verify`` (straight to the servers) until it exits 0; its last output."""
    start, out = time.monotonic(), ""
    while time.monotonic() - start < timeout:
        p = subprocess.run([str(OPENDISCO), "verify"], env=direct, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        out = (p.stdout + p.stderr)[-1500:]
        if p.returncode == 0:
            return True, out, time.monotonic() - start
        time.sleep(3)
    return False, out, time.monotonic() - start


async def settle(s: Settings, truth: Truth, client: httpx.AsyncClient, key: str) -> dict:
    """Rule 3, the faults stopped: every batch posted again until settled (as its client
    would), then the stores' own counts against the distinct events."""
    for i in range(0, len(truth.batches), 8):
        chunk = truth.batches[i : i + 8]
        await asyncio.gather(*(post_batch(client, truth, b, key, 60) for b in chunk))
    events = {e["id"]: e for b in truth.batches for e in b}
    mongo = clients.mongo_async(s)
    db = mongo[s.mongo_db]
    applied = {d["_id"] async for d in db["events"].find(
        {"_id": {"$in": list(events)}, "applied": True}, projection={"_id": 1})}  # fmt: skip
    unsure = db["events"].find({"_id": {"$in": sorted(truth.unsure - set(events))},
                                "applied": True})  # fmt: skip
    async for d in unsure:  # odd batches never answered: counted as the store holds them
        events[d["_id"]] = {k: d[k] for k in ("type", "user_id", "item_id")} | {"id": d["_id"]}
        applied.add(d["_id"])
    if lost := set(truth.acked) - applied:
        keep = ("_id", "type", "user_id", "item_id", "applied", "dropped", "claim_gen", "done")
        found = db["events"].find({"_id": {"$in": sorted(lost)[:5]}})
        docs = [{k: d.get(k) for k in keep} async for d in found]
        truth.violate(
            "acked_event_not_applied",
            {
                "n": len(lost),
                "ids": sorted(lost)[:5],
                "stored": docs,
                "posted": [truth.acked[i] for i in sorted(lost)[:5]],
            },
        )
    events = {i: e for i, e in events.items() if i in applied}  # those rejected are not
    want_in = Counter(e["item_id"] for e in events.values() if e["type"] == "like")
    got_in = (await counters(s, sorted(truth.items)))["inbound"]
    for iid in truth.items:
        if got_in[iid] != want_in[iid]:
            found = db["events"].find({"item_id": iid, "type": "like"})
            likes = [{k: d.get(k) for k in ("_id", "user_id", "ts", "applied", "dropped")}
                     async for d in found]  # fmt: skip
            for d in likes:
                d["known"] = d["_id"] in events
            truth.violate("inbound_count", {"item": iid, "got": got_in[iid],
                                            "want": want_in[iid], "likes": likes[:6]})  # fmt: skip
    members = sorted({e["user_id"] for e in events.values()})
    states = await UserStateStore(db).get_many(members)
    blocks = BlockStore(db)
    for u in members:
        mine = [e for e in events.values() if e["user_id"] == u]
        n = sum(e["type"] == "like" for e in mine)
        if u not in states or states[u].n_likes != n:
            truth.violate("n_likes", {"user": u, "got": getattr(states.get(u), "n_likes", None),
                                      "want": n})  # fmt: skip
        hidden = {truth.items[e["item_id"]]["owner_id"] for e in mine if e["type"] == "hide"}
        missing = hidden - set((await blocks.get(u)).blocked)
        if missing:
            truth.violate("block_missing", {"user": u, "missing": sorted(missing)[:5]})
    stored = await stored_checks(db, truth, 25)
    await mongo.close()
    return {"events_applied": len(events), "members_with_events": len(members), **stored}


def dead_letters(s: Settings, truth: Truth) -> int:
    """Every invalid document in dead letters with a reason (after sync settled)."""
    with clients.mongo(s) as mc:
        found = mc[s.mongo_db]["dead_letters"].find({"doc_id": {"$in": truth.invalid_ids}})
        letters = {d["doc_id"]: d.get("reason") for d in found}
    for bad in truth.invalid_ids:
        if not letters.get(bad):
            truth.violate("dead_letter_missing", bad)
    return len(letters)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"{args.seed}x{uuid.uuid4().hex[:6]}"
    base = load_settings()
    s = base.model_copy(update={"index_alias": f"chaos{tag}-items", "mongo_db": f"chaos{tag}",
                                "explore_rate": 0.0})  # fmt: skip
    rng = random.Random(args.seed)
    items, users = generate_marketplace(args.members, seed=args.seed)
    for it in items:  # some small caps, reached within a run
        if rng.random() < 0.1:
            it["exposure_cap"] = 12
    write_sample(s, items, users)
    await reindex(s)
    caps = {d["_id"]: d.get("exposure_cap") or s.exposure_default_cap for d in items}
    truth = Truth(
        items={d["_id"]: dict(d) for d in items},
        users={d["_id"]: dict(d) for d in users},
        items_collection=s.items_collection,
    )
    mc = clients.mongo(s)
    key, _ = create_key(mc[s.mongo_db], "chaos", ["read", "write"])
    lt = LoopThread()
    engine = _tcp(lt, s.opensearch_url, 9200)
    store = _tcp(lt, s.mongo_url, 27017)
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    with FaultyHttpProxy(engine.url) as http:
        via = s.model_copy(update={"opensearch_url": http.url, "mongo_url": store.mongo_url})
        port = free_port()
        serve_env = _env(via, tmp / "api", OPENDISCO_API_RATE_LIMIT="100000",
                         OPENDISCO_API_RATE_BURST="100000",
                         OPENDISCO_EVENTS_RECOVER_EVERY_S="10")  # fmt: skip
        api = Api(serve_env, port, tmp / "serve.log", workers=2)
        sync = Sync(_env(via, tmp / "sync", OPENDISCO_SYNC_POLL_INTERVAL="0.2",
                         OPENDISCO_SYNC_LEASE_SECONDS="3",
                         OPENDISCO_SYNC_RECONCILE_INTERVAL="15"), tmp / "sync.log")  # fmt: skip
        ctx = {"lt": lt, "engine": engine, "store": store, "http": http, "api": api,
               "sync": sync, "rng": random.Random(args.seed + 1), "counts": Counter(),
               "log": [], "t0": truth.t0, "truth": truth, "api_kills": args.api_kills,
               "api_down_s": [], "api_stopped_s": []}  # fmt: skip
        stop, wstop = asyncio.Event(), threading.Event()
        viewers = sorted(truth.users)[: args.viewers]
        writer = threading.Thread(
            target=writer_loop,
            daemon=True,
            args=(truth, mc[s.mongo_db], random.Random(args.seed + 2), wstop),
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            writer.start()
            tasks = [asyncio.ensure_future(client_loop(client, truth, key, viewers,
                                                       random.Random(args.seed * 100 + c), stop))
                     for c in range(args.clients)]  # fmt: skip
            others = sorted(truth.users)[args.viewers :]  # the odd posts' members: not judged
            tasks.append(
                asyncio.ensure_future(
                    odd_loop(client, truth, key, others, random.Random(args.seed + 3), stop)
                )
            )
            # --no-faults: the same load, a control run (the coroutine made only when awaited)
            sched = asyncio.ensure_future(
                asyncio.sleep(0) if args.no_faults else scheduler(ctx, stop)
            )
            await asyncio.sleep(args.seconds)
            stop.set()
            await sched
            await asyncio.gather(*tasks)
            wstop.set()
            writer.join(10)
            if api.proc.poll() is not None:
                truth.violate("serve_exited", api.proc.returncode)
            settling = time.monotonic()
            final = await settle(s, truth, client, key)
            final["settle_s"] = round(time.monotonic() - settling, 1)  # the backlog's drain
        slack = s.exposure_flush_s + s.signal_copies_s + 2.0
        windows = [
            (truth.t0 + a, truth.t0 + a + {"kill_api_worker": 30.0, "kill_api": 90.0}.get(k, d))
            for a, k, d in ctx["log"]
            if k not in ("kill_sync", "store_pause", "store_cut")
        ]
        cap_overruns(truth, caps, slack, windows)  # fmt: skip
        ok, out, waited = verify_until_ok(_env(s, tmp / "verify"), 120)
        if not ok:
            truth.violate("verify", out)
        final["dead_letters"] = dead_letters(s, truth)
        final["invalid_written"] = len(truth.invalid_ids)
        api.proc.terminate()
        sync.kill()
        try:
            api.proc.wait(30)
        except subprocess.TimeoutExpired:
            api.proc.kill()
    if not args.keep:
        osc = clients.opensearch(s)
        osc.indices.delete(index=f"chaos{tag}*", ignore_unavailable=True, expand_wildcards="all")
        mc.drop_database(s.mongo_db)
    mc.close()
    return {
        "seed": args.seed, "seconds": args.seconds, "faults_on": not args.no_faults,
        "members": args.members, "clients": args.clients, "namespace": f"chaos{tag}",
        "logs": str(tmp),
        "faults": dict(ctx["counts"]), "fault_log": ctx["log"], "api_down_s": ctx["api_down_s"],
        "api_stopped_s": ctx["api_stopped_s"],
        "stats": dict(sorted(truth.stats.items())), **final,
        "verify_s": round(waited, 1), "verify": out.strip().splitlines()[-1:],
        "violations": dict(truth.violations), "examples": dict(truth.examples),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=150)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--members", type=int, default=300)
    ap.add_argument("--viewers", type=int, default=60)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--api-kills", type=int, default=2, help="kills of the whole API a run")
    ap.add_argument("--no-faults", action="store_true", help="the load alone (a control)")
    ap.add_argument("--keep", action="store_true", help="keep the namespace (to inspect it)")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("faults", "stats", "violations")}, indent=1))


if __name__ == "__main__":
    main()
