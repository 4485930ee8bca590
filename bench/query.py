"""Candidate generation latency per surface vs the engine's own ``took`` (same requests).

    $(./dev env)/bin/python bench/query.py            # 20k items, 150 requests per cell
    $(./dev env)/bin/python bench/query.py --full     # 100k items, 400 requests per cell

A synthetic catalogue (random unit vectors are fine for latency; texts from a small
vocabulary) is indexed from index_templates/items.json under a throwaway alias. For every
surface (for_you, similar, search, cold_start, trending) and concurrency 1 and 8, each request
goes through ``opendisco.queries.generate_candidates`` (render + one ``_msearch`` + fusion;
``similar`` adds the anchor GET) with all filters on (exclusions, exposure-cap lookup,
two-sided eligibility, geo decay). Reported: p50/p99 of the client round trip, next to p50/p99
of the bare engine ``took`` of the same ``_msearch`` (max over its sources). Results go to
bench/results/query.json and the ``query`` section of bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from opensearchpy import helpers

from opendisco import Surface, clients, index_templates, load_settings
from opendisco._settings import Settings
from opendisco.queries import CandidateRequest, generate_candidates
from opendisco.signals import ExposureStore

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "query.json"
README = ROOT / "README.md"
SURFACES = [s.value for s in Surface]
LEVELS = (1, 8)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _docs(n: int, settings: Settings, seed: int = 7) -> Any:
    rng = np.random.default_rng(seed)
    pr = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    tags = [f"tag{i}" for i in range(60)]
    for start in range(0, n, 1000):
        m = min(1000, n - start)
        emb = np.round(_unit(rng, m, settings.embedding_dim), 4)
        beh = np.round(_unit(rng, m, settings.behaviour_dim), 4)
        for j in range(m):
            i = start + j
            kind = pr.choice(["movie", "listing", "product", "profile"])
            doc: dict[str, Any] = {
                "id": f"b{i}",
                "kind": kind,
                "title": " ".join(pr.choices(vocab, k=4)),
                "description": " ".join(pr.choices(vocab, k=20)),
                "tags": pr.sample(tags, 3),
                "category": f"c{i % 40}",
                "owner_id": f"o{i % 500}",
                "created_at": (NOW - timedelta(days=pr.uniform(0, 365))).isoformat(),
                "popularity": float(rng.lognormal(3, 1.5)),
                "quality": pr.random(),
                "available": pr.random() > 0.03,
                "location": {"lat": 52 + pr.uniform(-2, 2), "lon": 13 + pr.uniform(-2, 2)},
                "embedding": emb[j].tolist(),
                "behaviour": beh[j].tolist(),
            }
            if kind == "profile":
                lo = pr.randint(18, 40)
                doc |= {
                    "gender": pr.choice("fmx"),
                    "age": pr.randint(18, 70),
                    "pref_genders": pr.sample("fmx", 2),
                    "pref_age_min": lo,
                    "pref_age_max": lo + pr.randint(5, 30),
                }
            yield doc


def build_index(settings: Settings, n: int) -> None:
    client = clients.opensearch(settings, timeout=300)
    index = f"{settings.index_alias}-v1"
    body = index_templates.render("items", settings)
    body["settings"]["index"]["refresh_interval"] = "-1"
    body["aliases"] = {settings.index_alias: {}}
    client.indices.create(index=index, body=body)
    t0 = time.perf_counter()
    actions = ({"_index": index, "_id": d["id"], "_source": d} for d in _docs(n, settings))
    stream = helpers.streaming_bulk(
        client, actions, chunk_size=500, raise_on_error=False, max_retries=3
    )
    for done, (ok, info) in enumerate(stream, start=1):
        if not ok:
            raise SystemExit(f"bulk failed: {info}")
        if done % 5000 == 0:
            print(f"  indexed {done}/{n} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    client.indices.put_settings(index=index, body={"index": {"refresh_interval": "1s"}})
    client.indices.refresh(index=index)
    client.indices.forcemerge(index=index, max_num_segments=1, request_timeout=1200)
    print(f"  indexed {n} items in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    client.close()


def _requests(settings: Settings, n_items: int, count: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    pr = random.Random(seed)
    uv = _unit(rng, 64, settings.embedding_dim)
    bv = _unit(rng, 64, settings.behaviour_dim)
    out: dict[str, list[CandidateRequest]] = {s: [] for s in SURFACES}
    for i in range(count):
        viewer = {
            "gender": pr.choice("fmx"),
            "age": pr.randint(20, 60),
            "pref_genders": pr.sample("fmx", 2),
            "pref_age_min": 18,
            "pref_age_max": 70,
        }
        common = {
            "k": 100,
            "now": NOW,
            "viewer": viewer,
            "location": {"lat": 52 + pr.uniform(-1, 1), "lon": 13 + pr.uniform(-1, 1)},
            "exclude_ids": [f"b{pr.randrange(n_items)}" for _ in range(200)],
        }
        interests = [f"tag{pr.randrange(60)}" for _ in range(3)]
        out["for_you"].append(
            CandidateRequest(
                surface="for_you",
                user_vector=uv[i % 64].tolist(),
                behaviour_vector=bv[i % 64].tolist(),
                interests=interests,
                **common,
            )
        )
        out["similar"].append(
            CandidateRequest(surface="similar", item_id=f"b{pr.randrange(n_items)}", **common)
        )
        out["search"].append(
            CandidateRequest(
                surface="search",
                query_text=f"w{pr.randrange(3000)} w{pr.randrange(3000)}",
                user_vector=uv[i % 64].tolist(),
                **common,
            )
        )
        out["cold_start"].append(
            CandidateRequest(surface="cold_start", interests=interests, **common)
        )
        out["trending"].append(CandidateRequest(surface="trending", **common))
    return out


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def _cell(client: Any, settings: Settings, reqs: list[CandidateRequest], conc: int) -> dict:
    wall: list[float] = []
    took: list[float] = []
    sizes: list[int] = []
    errors = 0
    queue = list(reqs)

    async def worker() -> None:
        nonlocal errors
        while queue:
            req = queue.pop()
            t0 = time.perf_counter()
            cs = await generate_candidates(client, settings, req)
            wall.append((time.perf_counter() - t0) * 1000)
            took.append(float(cs.took_ms))
            sizes.append(len(cs.candidates))
            errors += bool(cs.errors)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    return {
        "requests": len(wall),
        "qps": round(len(wall) / elapsed, 1),
        "p50_ms": round(statistics.median(wall), 2),
        "p99_ms": round(_pct(wall, 0.99), 2),
        "took_p50_ms": round(statistics.median(took), 2),
        "took_p99_ms": round(_pct(took, 0.99), 2),
        "ratio_p50": round(statistics.median(wall) / max(statistics.median(took), 1.0), 2),
        "mean_candidates": round(statistics.mean(sizes), 1),
        "degraded": errors,
    }


async def run(settings: Settings, n_items: int, per_cell: int) -> dict[str, Any]:
    client = clients.async_opensearch(settings, timeout=60)
    try:
        store = ExposureStore(client, settings)
        await store.ensure()
        await store.record({f"b{i}": settings.exposure_default_cap for i in range(0, 500, 5)})
        warm = _requests(settings, n_items, 20, seed=1)
        for s in SURFACES:
            await _cell(client, settings, warm[s], 2)
        reqs = _requests(settings, n_items, per_cell, seed=2)
        out: dict[str, Any] = {}
        for s in SURFACES:
            out[s] = {}
            for conc in LEVELS:
                out[s][f"c{conc}"] = cell = await _cell(client, settings, reqs[s], conc)
                print(
                    f"  {s:10} c={conc}: p50 {cell['p50_ms']} ms p99 {cell['p99_ms']} ms "
                    f"(engine took p50 {cell['took_p50_ms']} p99 {cell['took_p99_ms']}) "
                    f"qps {cell['qps']}",
                    file=sys.stderr,
                )
        return out
    finally:
        await client.close()


def _table(result: dict[str, Any]) -> list[str]:
    rows = [
        f"{result['items']} items, {result['per_cell']} requests per cell "
        f"(OpenSearch {result.get('engine', '')}, {result.get('at', '')[:16]}):",
        "",
        "| surface | concurrency | p50 ms | p99 ms | engine took p50 | took p99 "
        "| p50 / took p50 | QPS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, cells in result["surfaces"].items():
        for level, c in cells.items():
            rows.append(
                f"| {s} | {level[1:]} | {c['p50_ms']} | {c['p99_ms']} | {c['took_p50_ms']} | "
                f"{c['took_p99_ms']} | ×{c['ratio_p50']} | {c['qps']} |"
            )
    return [*rows, ""]


def _readme(runs: dict[str, dict[str, Any]]) -> str:
    tables = [line for key in sorted(runs, key=int) for line in _table(runs[key])]
    return "\n".join(
        [
            "<!-- query -->",
            "## query",
            "",
            "`python bench/query.py [--full]`: candidate generation per surface through",
            "`opendisco.queries.generate_candidates` (render + one `_msearch` over every source +",
            "dedup/RRF; `similar` adds the anchor GET) with all filters on (200 excluded ids, the",
            "exposure-cap terms lookup, two-sided eligibility, geo decay), k=100 per source,",
            "next to the engine's own `took` for the same `_msearch` (max over its sources).",
            "Synthetic items (random unit vectors) on a shared 2-core machine.",
            "",
            *tables,
            "The gap between round trip and `took` is HTTP + JSON (hits carry `_source` without",
            "vectors) + rendering + fusion in Python. Runs share the 2 cores with other test",
            "sessions (load average 1-6 during the recorded runs), so absolute figures are",
            "pessimistic; at concurrency 8 the engine is CPU-bound (for_you = 5 searches per",
            "request). Results in `bench/results/query.json` (one run per catalogue size).",
            "<!-- /query -->",
        ]
    )


def load_runs() -> dict[str, dict[str, Any]]:
    if not RESULTS.exists():
        return {}
    data = json.loads(RESULTS.read_text())
    if "surfaces" in data:  # a single run (older format)
        return {str(data["items"]): data}
    return dict(data.get("runs", {}))


def write_readme(section: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    pattern = re.compile(r"<!-- query -->.*?<!-- /query -->", re.S)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    README.write_text(text.rstrip() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="100k items, 400 requests per cell")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="Keep the synthetic index.")
    args = ap.parse_args()
    n_items = args.items or (100_000 if args.full else 20_000)
    per_cell = args.requests or (400 if args.full else 150)
    alias = f"bench-q{uuid.uuid4().hex[:6]}-items"
    settings = load_settings(index_alias=alias)
    print(f"building {alias} with {n_items} items", file=sys.stderr)
    admin = clients.opensearch(settings)
    engine = admin.info()["version"]["number"]
    try:
        build_index(settings, n_items)
        surfaces = asyncio.run(run(settings, n_items, per_cell))
    finally:
        if not args.keep:
            admin.indices.delete(index=f"{alias}*", ignore_unavailable=True, expand_wildcards="all")
        admin.close()
    result = {
        "items": n_items,
        "per_cell": per_cell,
        "engine": engine,
        "at": datetime.now(UTC).isoformat(),
        "surfaces": surfaces,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs = load_runs()
    runs[str(n_items)] = result
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    write_readme(_readme(runs))
    print(json.dumps(result["surfaces"], indent=1))


if __name__ == "__main__":
    main()
