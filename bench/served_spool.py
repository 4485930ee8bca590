"""The served-list spool's cost: ``ServedLog.log`` while the store fails (each list encoded and
appended to the spool) vs while it answers (a queue append), and the write-back vs a bare
``insert_many`` of the same documents.

    $(./dev env)/bin/python bench/served_spool.py [--lists 2000] [--rounds 5]

In process, against the FerretDB of ``./dev services up`` (a database of its own, dropped
after). ``--lists`` served lists as the API logs them (200 scored candidates with every
feature column, 20 shown) go through:

* ``log`` with the store up: the answer path's cost, a reference queued (the bare side);
* ``log`` with the store down (its address refusing) and a spool: what the answer path pays
  during an outage, the list encoded (rows sampled, float32 bytes, BSON) and appended to a
  local file (``os.write``, no ``fsync``);
* the write-back of those spooled files once the store answers (read, decode, ``insert_many``
  in commands of 50, delete) vs a bare ``insert_many`` of the same encoded documents in
  commands of 50 into a fresh collection, alternated per round.

Medians over rounds. Writes bench/results/served_spool.json and the ``served-spool`` section
of bench/README.md. No target: an outage's answers are degraded anyway; this shows the
spool is microseconds of an answer's milliseconds and what the store's return costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from opendisco import clients, load_settings
from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import SERVED_LISTS, ServedList, ServedLog, ServedSpool
from opendisco.signals._served_list import encode_list

logging.getLogger("opendisco.signals").setLevel(logging.CRITICAL)  # the outage's warnings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_readme import write_section  # noqa: E402  (bench/, beside this file)

CANDIDATES, SHOWN = 200, 20


def lists(n: int, tag: str) -> list[ServedList]:
    rng = np.random.default_rng(7)
    X = rng.random((CANDIDATES, len(FEATURE_NAMES)))
    ids = [f"profile-{i:06d}" for i in range(CANDIDATES)]
    return [
        ServedList(
            f"{tag}-{k:06d}", datetime.now(UTC), f"m{k % 500}", "for_you", "for_you",
            "templates@bench", False, SHOWN, FEATURE_NAMES, X, ids, list(range(SHOWN)),
            [1.0] * SHOWN,
        )
        for k in range(n)
    ]  # fmt: skip


async def log_up(db: Any, batch: list[ServedList]) -> float:
    """µs per list of ``log`` with the store up (queued; written after the clock stops)."""
    log = ServedLog(db, flush_every_s=3600.0)
    t = time.perf_counter()
    for s in batch:
        log.log(s)
    took = time.perf_counter() - t
    await log.drain()
    return took / len(batch) * 1e6


async def log_down(root: Path, batch: list[ServedList], settings: Any) -> tuple[float, int]:
    """µs per list of ``log`` while writes fail (spooled), and the spool's bytes per list."""
    down = clients.mongo_async(
        settings.model_copy(update={"mongo_url": "mongodb://127.0.0.1:9/"}),
        serverSelectionTimeoutMS=200,
    )
    log = ServedLog(down[settings.mongo_db], flush_every_s=3600.0)
    spool = ServedSpool.open(root, 1 << 34, 3600.0)
    log.attach_spool(spool)
    log.log(batch[0])
    assert await log.flush() == 0 and log.spooled == 1  # the first write failed: spooling
    t = time.perf_counter()
    for s in batch[1:]:
        log.log(s)
    took = time.perf_counter() - t
    assert log.spooled == len(batch), log.spooled
    size = spool.bytes // len(batch)
    log.close_spool()
    await down.close()
    return took / (len(batch) - 1) * 1e6, size


async def write_back(db: Any, root: Path, n: int) -> float:
    """ms to write back a killed process's spool of ``n`` lists (the next process's log)."""
    log = ServedLog(db, flush_every_s=3600.0)
    log.spool = ServedSpool.open(root, 1 << 34, 3600.0)  # adopts the files left in ``root``
    t = time.perf_counter()
    assert await log._write_back()
    took = time.perf_counter() - t
    assert log.written + log.duplicates == n, (log.written, log.duplicates)
    log.close_spool()
    return took * 1e3


async def bare(db: Any, docs: list[dict[str, Any]]) -> float:
    """ms of ``insert_many`` of the same documents in commands of 50 (the bare store)."""
    t = time.perf_counter()
    for at in range(0, len(docs), 50):
        await db[SERVED_LISTS].insert_many(docs[at : at + 50], ordered=False)
    return (time.perf_counter() - t) * 1e3


async def run(n: int, rounds: int) -> dict[str, Any]:
    settings = load_settings()
    name = f"{settings.mongo_db}benchspool"
    mongo = clients.mongo_async(settings)
    runs: dict[str, list[float]] = {"log_up": [], "log_down": [], "write_back": [], "bare": []}
    size = 0
    try:
        for r in range(rounds):
            await mongo.drop_database(name)
            db = mongo[name]
            runs["log_up"].append(await log_up(db, lists(n, f"up{r}")))
            root = Path(tempfile.mkdtemp())
            spooled = lists(n, f"down{r}")
            us, size = await log_down(root, spooled, settings.model_copy(update={"mongo_db": name}))
            runs["log_down"].append(us)
            rng = np.random.default_rng(r)
            docs = [encode_list(s, 200, rng) for s in lists(n, f"bare{r}")]
            if r % 2:  # alternated: neither side always meets the warmer store
                runs["bare"].append(await bare(db, docs))
                runs["write_back"].append(await write_back(db, root, n))
            else:
                runs["write_back"].append(await write_back(db, root, n))
                runs["bare"].append(await bare(db, docs))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        await mongo.drop_database(name)
        await mongo.close()
    return {"runs": runs, "bytes_per_list": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lists", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    load = [os.getloadavg()[0]]
    got = asyncio.run(run(args.lists, args.rounds))
    load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in got["runs"].items()}
    out = {"lists": args.lists, "rounds": args.rounds, "load": load, "median": med, **got}
    (HERE / "results" / "served_spool.json").write_text(json.dumps(out, indent=1) + "\n")
    n = args.lists
    ratio = med["write_back"] / med["bare"]
    rate = n / med["write_back"] * 1e3
    section = f"""<!-- served-spool -->
## served-spool

`python bench/served_spool.py --lists {n} --rounds {args.rounds}` (in process, FerretDB of
`./dev services up`; load {load[0]:.1f} → {load[1]:.1f}): served lists as the API logs them
({CANDIDATES} scored candidates × {len(FEATURE_NAMES)} features, {SHOWN} shown; the document
keeps ≤ 200 rows) through `ServedLog.log` with the store up (a reference queued: the bare
answer path) and while its writes fail with a spool (each list encoded and appended to a local
file, no `fsync`); then the next process's write-back of those files vs a bare `insert_many`
of the same documents in commands of 50, alternated per round. Medians over rounds. No
target: an outage's answers are degraded anyway.

| | median |
|---|---|
| `log`, store up (queued) | {med["log_up"]:.2f} µs per list |
| `log`, store down, spooled | {med["log_down"]:.1f} µs per list ({got["bytes_per_list"]:,} bytes) |
| write-back of {n:,} spooled lists | {med["write_back"]:.0f} ms ({rate:,.0f} lists/s) |
| bare `insert_many` of the same {n:,} documents | {med["bare"]:.0f} ms ({ratio:.2f}× of it) |

Full figures in `bench/results/served_spool.json`.
<!-- /served-spool -->"""
    write_section("served-spool", section)
    print(section)


if __name__ == "__main__":
    main()
