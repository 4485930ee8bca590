"""Overload: offered load at 1x, 1.5x, 2x, 3x the API's measured saturation (OpenSearch healthy).

    $(./dev env)/bin/python bench/overload.py               # 20k items, 15 s per level
    $(./dev env)/bin/python bench/overload.py --quick       # 3k items, 5 s per level (smoke)
    $(./dev env)/bin/python bench/overload.py --compare     # also without admission control

The catalogue and the personal members are bench/api.py's (synthetic marketplace, likes
through the event path). The API runs under uvicorn in a subprocess (``opendisco serve``, auth
on, default admission settings unless overridden). First the saturation throughput ``S`` is
measured: closed loops at concurrency 4, 8 and 16 (bench/api.py saturates at 4-8), ``S`` =
the best rate of *fresh* answers (200, not degraded). Then, per multiple ``m`` of ``S``, an
open loop (Poisson arrivals at ``m * S`` per second, so clients do not slow down when the API
does) runs for the phase; each answer is fresh, degraded (the fallback), shed (503 +
Retry-After) or an error. Reported per level: goodput (fresh answers/s), degraded and shed
shares, p50/p99 of fresh answers, and the recovery time: after the overload phase the offered
load drops to ``0.5 S``; recovery = from that moment until the completion of the last
non-fresh answer (0 when the first answers after the drop are fresh already). Targets:
goodput at 2x and 3x >= 0.9 S; recovery <= 2 s. Results: bench/results/overload.json and
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api import _free_port, build, personal_requests
from opendisco import clients, load_settings

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "overload.json"
README = ROOT / "README.md"
LEVELS = (1.0, 1.5, 2.0, 3.0)
#: configurations compared with --compare (settings overrides of the API process)
NO_ADMISSION = {
    "api_max_concurrency": 256,
    "api_adaptive_concurrency": False,
    "api_queue_timeout_ms": 0,
    "api_max_queue": 0,
}
#: closed-loop concurrencies the saturation throughput is the best fresh-answer rate of
SAT_LEVELS = (4, 8, 16)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Client:
    """One aiohttp session against the API; each call classifies the answer."""

    def __init__(self, http: Any, base: str, users: list[str], k: int) -> None:
        self.http = http
        self.base = base
        self.users = users
        self.k = k
        self.rng = random.Random(11)
        self.errors: dict[str, int] = {}  # error reasons (status or exception type)

    def _error(self, reason: str) -> str:
        self.errors[reason] = self.errors.get(reason, 0) + 1
        return "error"

    async def call(self) -> str:
        user = self.rng.choice(self.users)
        url = f"{self.base}/v1/users/{user}/recommendations?k={self.k}"
        try:
            async with self.http.get(url) as r:
                if r.status == 503:
                    await r.read()
                    return "shed"
                if r.status != 200:
                    await r.read()
                    return self._error(f"http {r.status}")
                return "degraded" if (await r.json())["degraded"] else "fresh"
        except Exception as exc:
            return self._error(type(exc).__name__)


async def closed_loop(client: Client, conc: int, dur: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    lat: list[float] = []
    stop = time.perf_counter() + dur

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            kind = await client.call()
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "fresh":
                lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - t0
    return {
        "concurrency": conc,
        "fresh_per_s": round(counts.get("fresh", 0) / wall, 1),
        "counts": counts,
        "p99_fresh_ms": round((_pct(lat, 0.99) or 0) * 1000, 1),
    }


async def open_loop(client: Client, rate: float, dur: float, t_ref: float) -> list[dict[str, Any]]:
    """Poisson arrivals at ``rate``/s for ``dur`` s; one record per request (times relative to
    ``t_ref``)."""
    rng = random.Random(int(rate * 1000))
    records: list[dict[str, Any]] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(sent: float) -> None:
        kind = await client.call()
        done = time.perf_counter()
        records.append({"sent": sent - t_ref, "done": done - t_ref, "kind": kind})

    start = time.perf_counter()
    next_at = start
    while True:
        next_at += rng.expovariate(rate)
        if next_at - start > dur:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(time.perf_counter())))
    await asyncio.gather(*tasks)
    return records


def summarise_phase(records: list[dict[str, Any]], dur: float) -> dict[str, Any]:
    n = len(records)
    kinds = {
        k: sum(r["kind"] == k for r in records) for k in ("fresh", "degraded", "shed", "error")
    }
    fresh = [r["done"] - r["sent"] for r in records if r["kind"] == "fresh"]
    return {
        "offered_per_s": round(n / dur, 1),
        "goodput_per_s": round(kinds["fresh"] / dur, 1),
        "degraded_share": round(kinds["degraded"] / max(1, n), 3),
        "shed_share": round(kinds["shed"] / max(1, n), 3),
        "error_share": round(kinds["error"] / max(1, n), 3),
        "p50_fresh_ms": round(statistics.median(fresh) * 1000, 1) if fresh else None,
        "p99_fresh_ms": round((_pct(fresh, 0.99) or 0) * 1000, 1) if fresh else None,
        "counts": kinds,
    }


def recovery_s(records: list[dict[str, Any]], t_end: float) -> float:
    """From ``t_end`` to the completion of the last non-fresh answer sent after it."""
    bad = [r["done"] for r in records if r["sent"] >= t_end and r["kind"] != "fresh"]
    return round(max(0.0, max(bad) - t_end), 2) if bad else 0.0


async def measure(
    settings_overrides: dict[str, Any], users: list[str], args: argparse.Namespace, key: str
) -> dict[str, Any]:
    import aiohttp

    port = _free_port()
    overrides = {**settings_overrides, "api_port": port}
    settings = load_settings(**overrides)
    env = {**os.environ, **{f"OPENDISCO_{k.upper()}": str(v) for k, v in overrides.items()}}
    exe = Path(sys.executable).with_name("opendisco")
    proc = subprocess.Popen(
        [str(exe), "serve", "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        timeout = aiohttp.ClientTimeout(total=args.client_timeout)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"X-API-Key": key},
            timeout=timeout,
        ) as http:
            for _ in range(600):
                try:
                    async with http.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit("API process exited")
                await asyncio.sleep(0.2)
            client = Client(http, base, users, args.k)
            await closed_loop(client, 4, 3.0)  # warm up
            closed = [await closed_loop(client, c, args.sat_duration) for c in SAT_LEVELS]
            sat = max(r["fresh_per_s"] for r in closed)
            print(f"saturation: {sat} fresh/s ({closed}) errors {client.errors}", file=sys.stderr)
            if sat <= 0:
                raise SystemExit("no fresh answer at all: nothing to measure")
            rows = []
            for m in args.levels:
                load0 = os.getloadavg()[0]
                t_ref = time.perf_counter()
                over, after = await asyncio.gather(
                    open_loop(client, m * sat, args.duration, t_ref),
                    _after(client, sat, args, t_ref),
                )
                row = {
                    "multiple": m,
                    **summarise_phase(over, args.duration),
                    "recovery_s": recovery_s(after, args.duration),
                    "after": summarise_phase(after, args.recovery),
                    "load_1m": round(load0, 2),
                }
                rows.append(row)
                print(
                    f"{m}x: offered {row['offered_per_s']}/s goodput {row['goodput_per_s']}/s "
                    f"degraded {row['degraded_share']:.0%} shed {row['shed_share']:.0%} "
                    f"p99 fresh {row['p99_fresh_ms']} ms recovery {row['recovery_s']} s",
                    file=sys.stderr,
                )
                await asyncio.sleep(args.pause)
        return {
            "settings": {
                k: getattr(settings, k)
                for k in (
                    "api_max_concurrency",
                    "api_adaptive_concurrency",
                    "api_queue_timeout_ms",
                    "api_max_queue",
                    "api_deadline_ms",
                    "api_breaker_failures",
                )
            },
            "saturation_closed_loop": closed,
            "errors": client.errors,
            "saturation_fresh_per_s": sat,
            "levels": rows,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _after(
    client: Client, sat: float, args: argparse.Namespace, t_ref: float
) -> list[dict[str, Any]]:
    """The load after the overload phase: 0.5 S for ``args.recovery`` seconds."""
    await asyncio.sleep(max(0.0, t_ref + args.duration - time.perf_counter()))
    return await open_loop(client, 0.5 * sat, args.recovery, t_ref)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from opendisco.api import create_key

    rid = uuid.uuid4().hex[:6]
    base = {
        "index_alias": f"bench-ovl-{rid}-items",
        "mongo_db": f"bench_ovl_{rid}",
        "api_rate_limit": 1e9,
        "api_rate_burst": 1e9,
    }
    settings = load_settings(**base)
    sync_os = clients.opensearch(settings)
    mongo = clients.mongo(settings)
    try:
        users = await build(settings, args.items)
        plans = await personal_requests(settings, users, args.history_users, args.likes, args.k)
        key, _ = create_key(mongo[settings.mongo_db], "bench", ["read"])
        load_before = os.getloadavg()
        configs = {"admission": base}
        if args.compare:
            configs["no_admission"] = {**base, **NO_ADMISSION}
        out: dict[str, Any] = {
            "items": args.items,
            "k": args.k,
            "members": len(plans),
            "duration_s": args.duration,
            "recovery_window_s": args.recovery,
            "cpus": os.cpu_count(),
            "configs": {},
        }
        for name, overrides in configs.items():
            print(f"--- {name}", file=sys.stderr)
            out["configs"][name] = await measure(overrides, list(plans), args, key)
        out["load_avg_1m"] = {
            "before": round(load_before[0], 2),
            "after": round(os.getloadavg()[0], 2),
        }
        return out
    finally:
        sync_os.indices.delete(
            index=f"bench-ovl-{rid}-items*", ignore_unavailable=True, expand_wildcards="all"
        )
        mongo.drop_database(settings.mongo_db)
        sync_os.close()
        mongo.close()


def _verdict(res: dict[str, Any]) -> str:
    cfg = res["configs"]["admission"]
    sat = cfg["saturation_fresh_per_s"]
    worst = min(
        (r["goodput_per_s"] / sat for r in cfg["levels"] if r["multiple"] >= 2), default=None
    )
    rec = max((r["recovery_s"] for r in cfg["levels"]), default=None)
    return (
        f"goodput at ≥ 2× {worst:.2f}× saturation (target ≥ 0.9), "
        f"worst recovery {rec} s (target ≤ 2)"
        if worst is not None
        else "no level ≥ 2×"
    )


def write_readme(res: dict[str, Any]) -> None:
    load = res["load_avg_1m"]
    lines = [
        "<!-- overload -->",
        "## overload: shedding instead of collapsing",
        "",
        f"`bench/overload.py` ({res['items']} items, k={res['k']}, {res['members']} personal "
        f"members, open loop {res['duration_s']} s per level, then {res['recovery_window_s']} s "
        f"at 0.5× saturation; {res['cpus']} CPUs shared by OpenSearch, FerretDB, the API and "
        f"the load generator; 1-min load average {load['before']:.1f} → {load['after']:.1f}). "
        "Saturation S = the best fresh-answer rate of closed loops at concurrency 4/8/16. "
        "Fresh = 200 from the pipeline; degraded = 200 from the fallback; shed = 503 + "
        "Retry-After before any work. Recovery = from the drop to 0.5 S until the last "
        "non-fresh answer.",
        "",
    ]
    for name, cfg in res["configs"].items():
        s = cfg["settings"]
        lines += [
            f"**{name}** (`api_max_concurrency={s['api_max_concurrency']}`, adaptive "
            f"{s['api_adaptive_concurrency']}, "
            f"`api_queue_timeout_ms={s['api_queue_timeout_ms']}`, deadline "
            f"{s['api_deadline_ms']} ms): S = {cfg['saturation_fresh_per_s']} fresh answers/s.",
            "",
            "| offered | offered/s | goodput/s | goodput / S | degraded | shed | errors "
            "| p50 fresh ms | p99 fresh ms | recovery s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        sat = cfg["saturation_fresh_per_s"] or 1
        for r in cfg["levels"]:
            lines.append(
                f"| {r['multiple']}× | {r['offered_per_s']} | {r['goodput_per_s']} | "
                f"{r['goodput_per_s'] / sat:.2f} | {r['degraded_share']:.1%} | "
                f"{r['shed_share']:.1%} | {r['error_share']:.1%} | {r['p50_fresh_ms']} | "
                f"{r['p99_fresh_ms']} | {r['recovery_s']} |"
            )
        lines.append("")
    lines += [f"Admission control: {_verdict(res)}.", "<!-- /overload -->"]
    text = README.read_text()
    kept = re.search(r"<!-- overload-reading -->.*?<!-- /overload-reading -->\n?", text, re.S)
    if kept:
        lines.insert(-1, "")
        lines.insert(-1, kept.group(0).rstrip("\n"))
    section = "\n".join(lines) + "\n"
    if "<!-- overload -->" in text:
        text = re.sub(r"<!-- overload -->.*?<!-- /overload -->\n?", section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3k items, 5 s per level (smoke)")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds per overload level")
    ap.add_argument("--recovery", type=float, default=5.0, help="seconds at 0.5 S after each")
    ap.add_argument("--sat-duration", type=float, default=None, help="closed-loop seconds")
    ap.add_argument("--pause", type=float, default=3.0, help="idle seconds between levels")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument(
        "--levels", type=lambda s: [float(x) for x in s.split(",")], default=list(LEVELS)
    )
    ap.add_argument("--history-users", type=int, default=500)
    ap.add_argument("--likes", type=int, default=5)
    ap.add_argument("--client-timeout", type=float, default=10.0)
    ap.add_argument("--compare", action="store_true", help="also run without admission control")
    ap.add_argument("--render", action="store_true", help="only rewrite the README section")
    args = ap.parse_args()
    args.items = args.items or (3_000 if args.quick else 20_000)
    args.duration = args.duration or (5.0 if args.quick else 15.0)
    args.sat_duration = args.sat_duration or (4.0 if args.quick else 8.0)
    if args.render:
        write_readme(json.loads(RESULTS.read_text()))
        return
    res = asyncio.run(run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    write_readme(res)
    print(_verdict(res), file=sys.stderr)


if __name__ == "__main__":
    main()
