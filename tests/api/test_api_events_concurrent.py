"""POST /v1/events: one batch posted three times concurrently (a client retrying after a
timeout) is counted once, through three API workers on the real servers (issue 19, item 1)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from itertools import combinations
from typing import Any

from api_support import h, serve

from opendisco import Settings, clients
from opendisco.signals import ExposureStore, InboundCounter, ItemGraph, UserStateStore

ITEMS = [f"p{i}" for i in range(200, 230)]


def _batch(rnd: int) -> list[dict[str, Any]]:
    """30 events of 6 fresh members: impressions, likes and clicks on member profiles."""
    tag = uuid.uuid4().hex[:6]
    out = []
    for u in range(6):
        picks = [ITEMS[(rnd * 7 + u * 5 + j * 3) % len(ITEMS)] for j in range(5)]
        kinds = ["impression", "impression", "like", "click", "like"]
        out += [
            {"id": uuid.uuid4().hex, "type": k, "user_id": f"x{tag}{u}", "item_id": i}
            for k, i in zip(kinds, picks, strict=True)
        ]
    return out


async def _counters(settings: Settings) -> dict[str, Counter[Any]]:
    osc = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    try:
        db = mongo[settings.mongo_db]
        expo = await ExposureStore(osc, settings).counts(ITEMS)
        inbound = await InboundCounter(db).counts(ITEMS)
        graph = ItemGraph(db)
        edges: Counter[Any] = Counter()
        for src in ITEMS:
            for dst, w in (await graph.weights([src])).items():
                edges[(src, dst)] = w
        return {"exposure": Counter(expo), "inbound": Counter(inbound), "edges": edges}
    finally:
        await osc.close()
        await mongo.close()


def _delta(a: Counter[Any], b: Counter[Any]) -> Counter[Any]:
    return Counter({k: b[k] - a[k] for k in set(a) | set(b) if b[k] != a[k]})


async def test_concurrent_posts_of_one_batch_count_once(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # the shared machine may take seconds per batch: the retries wait for the first worker
    settings = api_settings.model_copy(update={"events_claim_wait_s": 20.0})
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(serve(settings)) for _ in range(3)]
        for rnd in range(5):
            batch = _batch(rnd)
            before = await _counters(api_settings)
            resps = await asyncio.gather(
                *(
                    w.post("/v1/events", json={"events": batch}, headers=h(keys["write"]))
                    for w in workers
                )
            )
            bodies = [r.json() for r in resps]
            codes = [r.status_code for r in resps]
            assert codes == [200, 200, 200], (codes, bodies)
            sums = [sum(b[f] for b in bodies) for f in ("accepted", "duplicates", "recovered")]
            assert sums == [30, 60, 0] and all(b["in_flight"] == 0 for b in bodies), bodies
            after = await _counters(api_settings)
            impressions = Counter(e["item_id"] for e in batch if e["type"] == "impression")
            likes = Counter(e["item_id"] for e in batch if e["type"] == "like")
            edges: Counter[Any] = Counter()
            for u in {e["user_id"] for e in batch}:
                pos = [
                    e["item_id"] for e in batch if e["user_id"] == u and e["type"] != "impression"
                ]
                for a, b in combinations(dict.fromkeys(pos), 2):
                    edges[(a, b)] += 1
                    edges[(b, a)] += 1
            assert _delta(before["exposure"], after["exposure"]) == impressions
            assert _delta(before["inbound"], after["inbound"]) == likes
            assert _delta(before["edges"], after["edges"]) == edges
            mongo = clients.mongo_async(api_settings)
            try:
                states = await UserStateStore(mongo[api_settings.mongo_db]).get_many(
                    {e["user_id"] for e in batch}
                )
            finally:
                await mongo.close()
            for u, st in states.items():
                mine = [e for e in batch if e["user_id"] == u]
                assert sorted(st.applied) == sorted(e["id"] for e in mine)
                assert st.n_likes == sum(e["type"] == "like" for e in mine)
