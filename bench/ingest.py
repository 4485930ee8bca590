"""Ingest benchmark: full reindex throughput vs bare ``SentenceTransformer.encode``.

    $(./dev env)/bin/python bench/ingest.py            # 10,000 synthetic profiles
    $(./dev env)/bin/python bench/ingest.py --full     # 100,000
    $(./dev env)/bin/python bench/ingest.py --n 2000   # any size

In one run, on the same texts: (1) bare ``model.encode`` (batch size from settings),
(2) a cold ``opendisco reindex`` (empty embedding cache) split into encode time and the rest,
(3) warm reindexes (every text cached) — median of ``--warm`` runs, with the time of the
embedding-cache prefetch, and (4) the floor of a warm run: a bare ``helpers.bulk`` of the same
index documents (same vectors, same template, refresh off, then one refresh) and a bare
full read of the items collection. Peak RSS of the process.
Works in a throwaway namespace (index alias ``bench<id>-items``, database ``bench<id>``),
removed at the end. Writes ``bench/results/ingest.json``.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from opendisco import clients, index_templates, load_settings
from opendisco.ingest import (
    Embedder,
    embedding_text,
    generate_marketplace,
    reindex,
    to_index_doc,
    validate_item,
    write_sample,
)

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_bulk(settings, items, vectors) -> float:  # type: ignore[no-untyped-def]
    """``helpers.bulk`` of the same index documents into a fresh index of the same template."""
    from opensearchpy import helpers

    client = clients.opensearch(settings)
    index = f"{settings.index_alias}-bare"
    body = index_templates.render("items", settings)
    refresh = body["settings"]["index"].get("refresh_interval", "1s")
    body["settings"]["index"]["refresh_interval"] = "-1"
    docs = []
    for raw, vec in zip(items, vectors.round(6).tolist(), strict=True):
        item = validate_item(raw, behaviour_dim=settings.behaviour_dim)
        docs.append({"_index": index, "_id": item["_id"], "_source": to_index_doc(item, vec)})
    try:
        client.indices.create(index=index, body=body)
        t0 = time.perf_counter()
        helpers.bulk(client, docs, chunk_size=settings.bulk_batch_size, request_timeout=120)
        client.indices.put_settings(index=index, body={"index": {"refresh_interval": refresh}})
        client.indices.refresh(index=index, request_timeout=300)
        took = time.perf_counter() - t0
        assert client.count(index=index)["count"] == len(docs)
        return took
    finally:
        client.indices.delete(index=index, ignore_unavailable=True)
        client.close()


def bare_read(settings) -> float:  # type: ignore[no-untyped-def]
    """One full, drained ``find`` of the items collection (FerretDB: one scan)."""
    mongo = clients.mongo(settings)
    try:
        t0 = time.perf_counter()
        with mongo[settings.mongo_db][settings.items_collection].find({}) as cur:
            sum(1 for _ in cur)
        return time.perf_counter() - t0
    finally:
        mongo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--full", action="store_true", help="100,000 documents")
    ap.add_argument("--warm", type=int, default=3, help="warm-cache reindex runs (median)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n = 100_000 if args.full else args.n
    run = uuid.uuid4().hex[:6]
    settings = load_settings().model_copy(
        update={"index_alias": f"bench{run}-items", "mongo_db": f"bench{run}", "keep_versions": 0}
    )
    model = clients.load_model(settings)
    items, users = generate_marketplace(n, seed=args.seed)
    texts = [embedding_text(validate_item(i)) for i in items]
    print(f"{n} documents, namespace {settings.mongo_db}", file=sys.stderr)
    try:
        write_sample(settings, items, users)

        # 1. bare encode of the same texts
        model.encode(texts[:64], batch_size=settings.embed_batch_size)  # warm-up
        t0 = time.perf_counter()
        vectors = model.encode(
            texts,
            batch_size=settings.embed_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        bare_s = time.perf_counter() - t0
        bare_dps = n / bare_s
        print(f"bare encode: {bare_dps:,.0f} docs/s ({bare_s:.1f}s)", file=sys.stderr)

        # 2. cold reindex: nothing cached
        embedder = Embedder(settings, model)
        cold = asyncio.run(reindex(settings, embedder=embedder))
        assert cold.indexed == n, cold
        print(
            f"cold reindex: {cold.docs_per_s:,.0f} docs/s ({cold.took_s:.1f}s, "
            f"encode {cold.encode_s:.1f}s)",
            file=sys.stderr,
        )

        # 3. warm reindexes: a fresh Embedder each time (cache read from MongoDB)
        warm, warm_s, prefetch_s = [], [], []
        for _ in range(args.warm):
            emb = Embedder(settings, model)
            rep = asyncio.run(reindex(settings, embedder=emb))
            emb.close()
            assert rep.encoded == 0 and rep.indexed == n, rep
            warm.append(rep.docs_per_s)
            warm_s.append(rep.took_s)
            prefetch_s.append(rep.prefetch_s)
            print(
                f"warm reindex: {rep.docs_per_s:,.0f} docs/s ({rep.took_s:.1f}s, prefetch "
                f"{rep.prefetched} vectors in {rep.prefetch_s:.1f}s)",
                file=sys.stderr,
            )
        embedder.close()

        # 4. floor of a warm run: bare bulk of the same documents, bare read of the items
        bulk_s = bare_bulk(settings, items, vectors)
        read_s = bare_read(settings)
        print(f"bare bulk+refresh: {bulk_s:.1f}s, bare items read: {read_s:.1f}s", file=sys.stderr)
    finally:
        os_client = clients.opensearch(settings)
        os_client.indices.delete(index=f"{settings.index_alias}*", ignore_unavailable=True)
        os_client.close()
        mongo = clients.mongo(settings)
        mongo.drop_database(settings.mongo_db)
        mongo.close()

    result = {
        "n": n,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg_1m": os.getloadavg()[0],
        "bare_encode_docs_per_s": round(bare_dps, 1),
        "bare_encode_s": round(bare_s, 2),
        "reindex_cold_docs_per_s": round(cold.docs_per_s, 1),
        "reindex_cold_s": round(cold.took_s, 2),
        "reindex_cold_encode_s": round(cold.encode_s, 2),
        "reindex_cold_rest_s": round(cold.took_s - cold.encode_s, 2),
        "cold_vs_bare": round(cold.docs_per_s / bare_dps, 3),
        "reindex_warm_docs_per_s_median": round(statistics.median(warm), 1),
        "reindex_warm_runs": [round(x, 1) for x in warm],
        "reindex_warm_s_median": round(statistics.median(warm_s), 2),
        "warm_prefetch_s_median": round(statistics.median(prefetch_s), 2),
        "bare_bulk_refresh_s": round(bulk_s, 2),
        "bare_bulk_docs_per_s": round(n / bulk_s, 1),
        "bare_items_read_s": round(read_s, 2),
        "warm_vs_bare_bulk": round(statistics.median(warm) / (n / bulk_s), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "targets": {"cold_vs_bare": 0.8, "warm_docs_per_s": 3000},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    key = "full" if args.full else str(n)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old[key] = result
    RESULTS.write_text(json.dumps(old, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
