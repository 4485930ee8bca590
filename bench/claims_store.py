"""The events' claim updates on the store: a holder's renewal and its record of an applied
effect (``EventClaims``: ``update_many({_id: {$in: ids}, claim_owner: token}, ...)``) vs the
same update filtered on ``_id`` alone (the bare store), at ``--events`` stored events.

    $(./dev env)/bin/python bench/claims_store.py [--events 20000] [--batch 50] [--rounds 30]
        [--label p5]

In process, against ``OPENDISCO_MONGO_URL`` (the FerretDB of ``./dev services up`` unless
set; a database of its own, dropped after). The events are stamped and inserted the way
``POST /events`` does (``EventClaims.stamp`` / ``insert``, a token per batch); each round
picks one batch and times, alternating: the holder's renewal (``renew``: no generation
beyond 0 held, so the events' update alone), its record of an applied effect
(``record_done``) and the bare ``update_many`` by ``_id`` alone. Medians and p99 over rounds.
On FerretDB 1.24 an ``_id`` condition beside another key was not pushed down before the
build's patch level 5: every such update scanned the table, and a process's renewals, queued
behind its other updates of the events, came later than a lease under clients' retries
(bench/chaos.py seed 46). Writes bench/results/claims_store.json (a run per
``--label``) and the ``claims-store`` section of bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from opendisco import clients, load_settings
from opendisco.signals import EventClaims

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_readme import write_section  # noqa: E402  (bench/, beside this file)

RESULT = HERE / "results" / "claims_store.json"


async def fill(claims: EventClaims, events: int, batch: int) -> list[tuple[list[str], str]]:
    """Store ``events`` claimed events in batches; returns each batch's ids and token."""
    now, out = datetime.now(UTC), []
    for at in range(0, events, batch):
        token = f"call-{at // batch:06d}"
        docs = [
            {"_id": f"ev-{i:07d}", "user_id": f"m{i % 997}", "item_id": f"p{i % 4999}",
             "type": "like", "ts": now}
            for i in range(at, min(at + batch, events))
        ]  # fmt: skip
        assert not await claims.insert(claims.stamp(docs, token, f"mark-{token}"))
        out.append(([d["_id"] for d in docs], token))
    return out


async def one_round(
    claims: EventClaims, db: Any, ids: list[str], token: str, r: int
) -> dict[str, float]:
    """ms of each update of one batch, in an order alternating with the round."""
    steps: dict[str, Callable[[], Awaitable[Any]]] = {
        "renew": lambda: claims.renew(ids, token),
        "record_done": lambda: claims.record_done(ids, token, f"bench{r}"),
        "bare_id_only": lambda: db["events"].update_many(
            {"_id": {"$in": ids}}, {"$set": {"bench_touched": r}}
        ),
    }
    out = {}
    for key in list(steps) if r % 2 == 0 else list(reversed(steps)):
        t = time.perf_counter()
        await steps[key]()
        out[key] = (time.perf_counter() - t) * 1e3
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(ms), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


async def run(events: int, batch: int, rounds: int) -> dict[str, Any]:
    settings = load_settings()
    name = f"{settings.mongo_db}benchclaims"
    mongo = clients.mongo_async(settings)
    try:
        await mongo.drop_database(name)
        db = mongo[name]
        claims = EventClaims(db, lease_s=30.0)
        t = time.perf_counter()
        batches = await fill(claims, events, batch)
        fill_s = time.perf_counter() - t
        rng = np.random.default_rng(0)
        runs: dict[str, list[float]] = {"renew": [], "record_done": [], "bare_id_only": []}
        for r in range(rounds):
            ids, token = batches[int(rng.integers(len(batches)))]
            for key, ms in (await one_round(claims, db, ids, token, r)).items():
                runs[key].append(ms)
        info = await mongo.server_info()
        return {
            "events": events,
            "batch": batch,
            "rounds": rounds,
            "store": f"FerretDB {info['ferretdbVersion']}" if "ferretdbVersion" in info
            else f"MongoDB {info['version']}",
            "fill_s": round(fill_s, 1),
            **{k: summary(v) for k, v in runs.items()},
        }  # fmt: skip
    finally:
        await mongo.drop_database(name)
        await mongo.close()


def section(results: dict[str, Any]) -> str:
    rows = [
        f"| {label} ({r['store']}) | {r['events']:,} | "
        + " | ".join(
            f"{r[k]['median_ms']:,} / {r[k]['p99_ms']:,}"
            for k in ("renew", "record_done", "bare_id_only")
        )
        + " |"
        for label, r in results.items()
    ]
    return "\n".join(
        [
            "<!-- claims-store -->",
            "Events' claim updates, a batch of "
            f"{next(iter(results.values()))['batch']} events, ms median / p99 over rounds",
            "(`bench/claims_store.py`, `results/claims_store.json`):",
            "",
            "| store | events stored | renewal (`_id` + `claim_owner`) | record of an effect "
            "(`_id` + `claim_owner`) | bare update (`_id` alone) |",
            "|---|---|---|---|---|",
            *rows,
            "<!-- /claims-store -->",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--label", default="current")
    args = ap.parse_args()
    out = asyncio.run(run(args.events, args.batch, args.rounds))
    print(json.dumps(out, indent=1))
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    results[args.label] = out
    RESULT.write_text(json.dumps(results, indent=1) + "\n")
    write_section("claims-store", section(results))


if __name__ == "__main__":
    main()
