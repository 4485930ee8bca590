"""Ingest benchmark: reindex and sync throughput vs the bare engine on the same documents.

    $(./dev env)/bin/python bench/ingest.py                 # 10,000 synthetic profiles
    $(./dev env)/bin/python bench/ingest.py --n 100000 --seed-cache --concurrency 2 --no-sync
    $(./dev env)/bin/python bench/ingest.py --n 2000        # any size (a quick check)

Every item carries a 32-d ``behaviour`` vector, so the index builds both HNSW graphs (384-d
content + 32-d behaviour), as in production; it rides on the item documents (the older
layout ``ingest.join_behaviour`` still reads; ``opendisco train`` now writes its own
collection, joined the same way) as a BSON float32 vector (``--behaviour list``: the older
array of doubles), so the bench reads one collection as before. ``--seed-cache``
fills the embedding cache with random unit vectors of the right shape instead of encoding
(no cold phase): a warm build reads the cache, never the model, so its timing is the same,
and 100k encodes would take hours on this CPU. In one run, on the same documents:

1. cold (``--no-cold`` skips it): bare ``SentenceTransformer.encode`` of the texts vs a
   ``reindex`` with an empty embedding cache (target ≥ 0.8× bare encode);
2. warm, interleaved per concurrency c in ``--concurrency`` (default 1 and 2), ``--warm``
   rounds: a **bare bulk** — the very NDJSON our prepare step produces, sent by c concurrent
   bulk requests of ``bulk_batch_size`` into a fresh index of the same template (refresh off,
   then one refresh), no MongoDB — and a **warm reindex** at ``bulk_concurrency = c`` (every
   text in the MongoDB cache, a fresh in-process cache each run): docs/s and the ratio
   warm/bare per round (target ≥ 0.8×);
3. sync: every item updated in MongoDB (``version`` + 1, new ``popularity``, texts
   unchanged), then one ``sync_once`` pass at each c: changes/s against the bare bulk at the
   same c (target ≥ 0.7×); then one polling window that matches nothing (what each poll
   between changes costs): its time and CPU per item in the collection.

Also: the load average before/after, the CPU milliseconds per document of this process
(``python``) and of the local OpenSearch and FerretDB processes (their pids from
``<state_dir>/run``) during each bare and warm run — where the CPU goes — and peak RSS.
Results go to ``bench/results/ingest.json`` under the key ``n``; when both 10,000 and 100,000
are there, the 100k/10k warm-time ratio is printed (target ≤ 11). Works in a throwaway
namespace (alias ``bench<id>-items``, database ``bench<id>``), removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from opendisco import Settings, clients, index_templates, load_settings, now_ms
from opendisco.ingest import (
    Embedder,
    PollingFeed,
    embedding_text,
    generate_marketplace,
    prepare,
    reindex,
    store_vector,
    sync_once,
    validate_item,
    write_sample,
)

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def server_pids(settings: Settings) -> dict[str, int]:
    """The local servers' pids (``<state_dir>/run/*.pid``) whose CPU each run reports."""
    out = {}
    for name in ("opensearch", "ferretdb"):
        path = settings.state_dir / "run" / f"{name}.pid"
        try:
            pid = int(path.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            continue
        out[name] = pid
    return out


def proc_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each pid, and of this process as ``python``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"python": cpu_s()}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_split(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU milliseconds per document of each process between two ``proc_cpu`` readings."""
    return {k: round((after[k] - before[k]) / n * 1e3, 3) for k in before if k in after}


def seed_cache(settings: Settings, texts: list[str]) -> None:
    """A warm cache without the model: a random unit vector of the right shape per text key
    (what a warm build reads is the cache, not the model; encoding 100k texts takes hours
    on this CPU)."""
    emb = Embedder(settings, model=object())
    keys = list(dict.fromkeys(emb.keys(texts)))
    rng = np.random.default_rng(0)
    try:
        for k in range(0, len(keys), 500):
            chunk = keys[k : k + 500]
            vecs = rng.standard_normal((len(chunk), settings.embedding_dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            assert emb.store is not None
            emb.store.put_many(dict(zip(chunk, vecs, strict=True)))
    finally:
        emb.close()


def with_behaviour(
    items: list[dict[str, Any]], dim: int, seed: int, stored: str
) -> list[dict[str, Any]]:
    """A unit ``behaviour`` vector per item on the item itself, a BSON float32 vector (what
    ``opendisco train`` stores) or, ``stored="list"``, the older array of doubles."""
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(items), dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    if stored == "list":
        return [
            dict(it, behaviour=[round(float(x), 6) for x in v])
            for it, v in zip(items, vecs, strict=True)
        ]
    return [dict(it, behaviour=store_vector(v)) for it, v in zip(items, vecs, strict=True)]


async def bare_bulk(settings: Settings, chunks: list[bytes], n: int, concurrency: int) -> float:
    """``concurrency`` tasks sending the prepared NDJSON chunks into a fresh index of the same
    template; refresh off while loading, one refresh at the end (what reindex does)."""
    client = clients.async_opensearch(settings, timeout=300)
    index = f"{settings.index_alias}-bare{concurrency}"
    body = index_templates.render("items", settings)
    refresh = body["settings"]["index"].get("refresh_interval", "1s")
    body["settings"]["index"]["refresh_interval"] = "-1"
    todo = list(reversed(chunks))
    params = {"filter_path": "errors,items.*.error"}

    async def worker() -> None:
        while todo:
            resp = await client.bulk(body=todo.pop(), index=index, params=params)
            assert not resp.get("errors"), str(resp)[:500]

    try:
        await client.indices.create(index=index, body=body)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await client.indices.put_settings(
            index=index, body={"index": {"refresh_interval": refresh}}
        )
        await client.indices.refresh(index=index)
        took = time.perf_counter() - t0
        assert (await client.count(index=index))["count"] == n
        return took
    finally:
        await client.indices.delete(index=index, ignore_unavailable=True)
        await client.close()


def prepared_chunks(settings: Settings, items: list[dict[str, Any]], model: Any) -> list[bytes]:
    """Our own prepare step's NDJSON (same vectors, versions, bytes), cut like the writer."""
    emb = Embedder(settings, model)
    try:
        out = []
        for k in range(0, len(items), settings.bulk_batch_size):
            batch = [dict(d, version=1) for d in items[k : k + settings.bulk_batch_size]]
            prep = prepare(batch, emb, settings, source="bench", delete_invalid=False)
            assert not prep.letters and emb.encoded == 0
            out.append(b"".join(a.data or b"" for a in prep.actions))
        return out
    finally:
        emb.close()


def bump_all(settings: Settings) -> int:
    """Every item gets version + 1, a new popularity and a fresh updated_at (one command)."""
    with clients.mongo(settings) as mc:
        coll = mc[settings.mongo_db][settings.items_collection]
        res = coll.update_many(
            {}, {"$inc": {"version": 1, "popularity": 1.0}, "$set": {"updated_at": now_ms()}}
        )
        return res.modified_count


async def idle_poll(settings: Settings) -> float:
    """One polling window from now: it matches nothing, which is what every poll between
    changes costs the server (a sync pass itself re-reads the last ``sync_overlap_seconds``
    of changes, here all n items)."""
    client = clients.mongo_async(settings)
    try:
        feed = PollingFeed(settings, client[settings.mongo_db])
        t0 = time.perf_counter()
        async with feed._window(now_ms()) as batches:
            async for docs in batches:
                assert not docs, "an idle window read documents"
        return time.perf_counter() - t0
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--warm", type=int, default=2, help="rounds of (bare, warm) per concurrency")
    ap.add_argument("--concurrency", default="1,2", help="bulk concurrencies compared")
    ap.add_argument("--no-cold", action="store_true", help="skip bare encode + cold reindex")
    ap.add_argument(
        "--seed-cache",
        action="store_true",
        help="fill the embedding cache with random unit vectors instead of encoding (no cold)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--behaviour",
        choices=("binary", "list"),
        default="binary",
        help="items' behaviour stored as a BSON float32 vector (what train writes) or a list",
    )
    ap.add_argument("--no-sync", action="store_true", help="skip the sync phase")
    ap.add_argument(
        "--pid",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="a server process to report CPU for (default: <state_dir>/run/*.pid), e.g. "
        "ferretdb=1234 for a private FerretDB at OPENDISCO_MONGO_URL",
    )
    args = ap.parse_args()
    n, levels = args.n, [int(c) for c in args.concurrency.split(",")]
    run = uuid.uuid4().hex[:6]
    base = load_settings().model_copy(
        update={"index_alias": f"bench{run}-items", "mongo_db": f"bench{run}", "keep_versions": 0}
    )
    load_before = os.getloadavg()
    model = None if args.seed_cache else clients.load_model(base)
    pids = server_pids(base) | {k: int(v) for k, v in (p.split("=", 1) for p in args.pid)}
    items, users = generate_marketplace(n, seed=args.seed)
    items = with_behaviour(items, base.behaviour_dim, args.seed, args.behaviour)
    texts = [embedding_text(validate_item(i)) for i in items]
    log(f"{n} documents with behaviour vectors, namespace {base.mongo_db}, load {load_before}")
    result: dict[str, Any] = {"n": n, "concurrency": levels, "behaviour": args.behaviour}
    try:
        t0 = time.perf_counter()
        write_sample(base, items, users)
        log(f"written to MongoDB in {time.perf_counter() - t0:.0f}s")

        if args.seed_cache:
            t0 = time.perf_counter()
            seed_cache(base, texts)
            log(f"cache seeded in {time.perf_counter() - t0:.0f}s")
        elif not args.no_cold:
            model.encode(texts[:64], batch_size=base.embed_batch_size)  # warm-up
            t0 = time.perf_counter()
            model.encode(
                texts,
                batch_size=base.embed_batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            bare_s = time.perf_counter() - t0
            emb = Embedder(base, model)
            cold = asyncio.run(reindex(base, embedder=emb))
            emb.close()
            assert cold.indexed == n and cold.encoded == n, cold
            result["cold"] = {
                "bare_encode_docs_per_s": round(n / bare_s, 1),
                "reindex_docs_per_s": round(cold.docs_per_s, 1),
                "reindex_s": round(cold.took_s, 1),
                "reindex_encode_s": round(cold.encode_s, 1),
                "ratio": round(cold.docs_per_s / (n / bare_s), 3),
            }
            log(f"cold: {result['cold']}")
        else:  # fill the cache without timing it
            emb = Embedder(base, model)
            emb.encode(texts)
            emb.close()

        chunks = prepared_chunks(base, items, model)
        warm: dict[str, Any] = {}
        for c in levels:
            s = base.model_copy(update={"bulk_concurrency": c})
            rounds = []
            for _ in range(args.warm):
                p0 = proc_cpu(pids)
                bare = asyncio.run(bare_bulk(s, chunks, n, c))
                p1 = proc_cpu(pids)
                emb = Embedder(s, model)
                rep = asyncio.run(reindex(s, embedder=emb))
                p2 = proc_cpu(pids)
                emb.close()
                assert rep.encoded == 0 and rep.indexed == n, rep
                rounds.append(
                    {
                        "bare_s": round(bare, 2),
                        "reindex_s": round(rep.took_s, 2),
                        "ratio": round(bare / rep.took_s, 3),
                        "bare_cpu_ms_per_doc": cpu_split(p0, p1, n),
                        "reindex_cpu_ms_per_doc": cpu_split(p1, p2, n),
                    }
                )
                log(f"warm c={c}: {rounds[-1]}")
            warm[str(c)] = {
                "bare_docs_per_s": round(n / statistics.median(r["bare_s"] for r in rounds), 1),
                "reindex_docs_per_s": round(
                    n / statistics.median(r["reindex_s"] for r in rounds), 1
                ),
                "reindex_s_median": statistics.median(r["reindex_s"] for r in rounds),
                "ratio_median": statistics.median(r["ratio"] for r in rounds),
                "rounds": rounds,
            }
        result["warm"] = warm

        sync: dict[str, Any] = {}
        for c in [] if args.no_sync else levels:
            s = base.model_copy(update={"bulk_concurrency": c, "sync_batch_size": 500})
            bare = asyncio.run(bare_bulk(s, chunks, n, c))
            assert bump_all(s) == n
            emb = Embedder(s, model)
            p0 = proc_cpu(pids)
            rep = asyncio.run(sync_once(s, embedder=emb))
            p1 = proc_cpu(pids)
            emb.close()
            assert rep.indexed == n and rep.encoded == 0, rep
            sync[str(c)] = {
                "changes_per_s": round(rep.seen / rep.took_s, 1),
                "sync_s": round(rep.took_s, 2),
                "bare_s": round(bare, 2),
                "ratio": round(bare / rep.took_s, 3),
                "cpu_ms_per_change": cpu_split(p0, p1, n),
            }
            log(f"sync c={c}: {sync[str(c)]}")
        result["sync"] = sync
        if not args.no_sync:
            p0 = proc_cpu(pids)
            took = asyncio.run(idle_poll(base))
            p1 = proc_cpu(pids)
            result["idle_poll"] = {"s": round(took, 3), "cpu_ms_per_item": cpu_split(p0, p1, n)}
            log(f"idle poll: {result['idle_poll']}")
    finally:
        osc = clients.opensearch(base)
        osc.indices.delete(index=f"{base.index_alias}*", ignore_unavailable=True)
        osc.close()
        with clients.mongo(base) as mc:
            mc.drop_database(base.mongo_db)

    result.update(
        machine={"cpus": os.cpu_count(), "python": platform.python_version()},
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        targets={"warm_vs_bare": 0.8, "cold_vs_bare_encode": 0.8, "sync_vs_bare": 0.7},
    )
    RESULTS.parent.mkdir(exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old = {k: v for k, v in old.items() if k[:1].isdigit()}  # earlier layouts are dropped
    old[str(n) if args.behaviour == "binary" else f"{n}-list"] = result
    small, large = old.get("10000"), old.get("100000")
    if small and large:
        for c in set(small["warm"]) & set(large["warm"]):
            ratio = large["warm"][c]["reindex_s_median"] / small["warm"][c]["reindex_s_median"]
            log(f"100k/10k warm time at c={c}: {ratio:.2f} (target <= 11)")
    RESULTS.write_text(json.dumps(old, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
