"""POST /v1/events: one batch posted three times concurrently (a client retrying after a
timeout) is counted once, through three API workers on the real servers (issue 19, item 1);
also when MongoDB, the engine or both stop answering mid-batch (paused like SIGSTOP, or their
connections cut like a kill) while the three clients keep retrying: once they are back, every
event is counted once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from itertools import combinations
from typing import Any

import httpx
import pytest
from api_support import h, proxied, serve

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


async def _adopted_written(*apps: httpx.AsyncClient) -> None:
    """What the apps adopted at their start is written before a count begins: pages an
    earlier test's app served and left in the session's served-impression journal (stopped
    before its last flush) are counted by whichever app starts next in the namespace; inside
    a count they read as an impression of the batch counted twice."""
    for app in apps:
        await app.app.state.runtime.discovery.served.drain()


def _delta(a: Counter[Any], b: Counter[Any]) -> Counter[Any]:
    return Counter({k: b[k] - a[k] for k in set(a) | set(b) if b[k] != a[k]})


async def _counted_once(
    settings: Settings, batch: list[dict[str, Any]], before: dict[str, Counter[Any]], why: Any
) -> None:
    """Every event of ``batch`` counted exactly once since ``before``: exposure (impressions),
    inbound likes, co-engagement edges, and each member's state."""
    after = await _counters(settings)
    impressions = Counter(e["item_id"] for e in batch if e["type"] == "impression")
    likes = Counter(e["item_id"] for e in batch if e["type"] == "like")
    edges: Counter[Any] = Counter()
    for u in {e["user_id"] for e in batch}:
        pos = [e["item_id"] for e in batch if e["user_id"] == u and e["type"] != "impression"]
        for a, b in combinations(dict.fromkeys(pos), 2):
            edges[(a, b)] += 1
            edges[(b, a)] += 1
    assert _delta(before["exposure"], after["exposure"]) == impressions, why
    assert _delta(before["inbound"], after["inbound"]) == likes, why
    assert _delta(before["edges"], after["edges"]) == edges, why
    mongo = clients.mongo_async(settings)
    try:
        states = await UserStateStore(mongo[settings.mongo_db]).get_many(
            {e["user_id"] for e in batch}
        )
    finally:
        await mongo.close()
    assert len(states) == len({e["user_id"] for e in batch}), why
    for u, st in states.items():
        mine = [e for e in batch if e["user_id"] == u]
        assert sorted(st.applied) == sorted(e["id"] for e in mine), why
        assert st.n_likes == sum(e["type"] == "like" for e in mine), why


async def test_concurrent_posts_of_one_batch_count_once(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # the shared machine may take seconds per batch: the retries wait for the first worker
    settings = api_settings.model_copy(update={"events_claim_wait_s": 20.0})
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(serve(settings)) for _ in range(3)]
        await _adopted_written(*workers)
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
            await _counted_once(api_settings, batch, before, bodies)


async def _until_settled(w: httpx.AsyncClient, batch: list[dict[str, Any]], key: str) -> None:
    """A client posting ``batch`` again until an answer says every event is done."""
    seen = []
    for _ in range(120):
        try:
            r = await w.post("/v1/events", json={"events": batch}, headers=h(key), timeout=30)
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 200:
            seen.append(body := r.json())
            if body["in_flight"] == 0 and not body["rejected"]:
                return
        elif r is not None:
            assert r.status_code in (429, 503), (r.status_code, r.text)  # never a 500
        await asyncio.sleep(0.5)
    raise AssertionError(f"the batch never settled: {seen[-3:]}")


@pytest.mark.parametrize(
    ("fault", "outage_s", "delays"),
    [
        # three of the five starts each (~9 s a round), every start under a store fault and
        # an engine fault; all five for the short engine kill
        ("paused", 5.0, (0.0, 0.15, 0.6)),
        ("killed", 7.0, (0.05, 0.3, 0.6)),
        ("engine paused", 8.0, (0.05, 0.3, 0.6)),
        ("engine killed", 3.0, (0.0, 0.05, 0.15, 0.3, 0.6)),
        ("both killed", 7.0, (0.0, 0.15, 0.3)),
    ],
    ids=["paused", "killed", "engine paused", "engine killed", "both killed"],
)
async def test_a_store_outage_mid_batch_with_retries_counts_every_event_once(
    api_settings: Settings,
    api_catalogue: dict[str, Any],
    keys: dict[str, str],
    fault: str,
    outage_s: float,
    delays: tuple[float, ...],
) -> None:
    """The outage starts 0–0.6 s into the batch (before, between or after the counters'
    writes and their records) and lasts past the route's 4 s wait (paused: 503s while
    the batch waits on the store) or past the driver's 5 s server selection (killed: the
    batch fails and must give its claims up with what it wrote). It is shorter than the
    claim lease, as a store restart or failover is."""
    os_proxy, mongo_proxy, settings = await proxied(
        api_settings,
        mongo=True,
        events_claim_lease_s=12.0,
        events_claim_wait_s=4.0,
        events_recover_every_s=2.0,
    )
    assert mongo_proxy is not None
    try:
        async with contextlib.AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(serve(settings)) for _ in range(3)]
            await _adopted_written(*workers)
            for rnd, delay in enumerate(delays):
                batch = _batch(100 + rnd)
                before = await _counters(api_settings)
                posts = [_until_settled(w, batch, keys["write"]) for w in workers]
                clients_done = asyncio.gather(*posts)
                await asyncio.sleep(delay)
                cut = {"engine": [os_proxy], "both": [os_proxy, mongo_proxy]}
                proxies = cut.get(fault.split()[0], [mongo_proxy])
                for proxy in proxies:
                    if fault.endswith("paused"):
                        proxy.pause()
                    else:
                        await proxy.kill()
                await asyncio.sleep(outage_s)
                for proxy in proxies:
                    await proxy.resume()
                await clients_done
                await _counted_once(api_settings, batch, before, (fault, delay))
    finally:
        await os_proxy.close()
        await mongo_proxy.close()


async def test_store_connections_that_never_answer_again_do_not_stop_event_ingestion(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    """MongoDB's open connections go silent for good while a batch is applied (their server
    gone without a reset: a host lost, a partition that dropped their state; new connections
    reach the store). The batch's store operations fail after the API's socket timeout (a
    third of the claim lease), its
    claims are given up, and a client posting it again has it counted once within a bounded
    time, as is a fresh batch after it. (Without a socket timeout the driver waited on the
    silent connections forever, one of those waits holding the lock every claim update
    takes: no event was applied again until the process restarted — live, FerretDB paused
    for 60 s under retrying clients: every post 503 for the 15 minutes after it was back.)"""
    os_proxy, mongo_proxy, settings = await proxied(
        api_settings,
        mongo=True,
        events_claim_lease_s=6.0,  # socket timeout: 2 s
    )
    assert mongo_proxy is not None
    key = keys["write"]

    async def settles(client: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        deadline, last = loop.time() + 90.0, None
        while loop.time() < deadline:
            r = await client.post("/v1/events", json={"events": batch}, headers=h(key))
            last = (r.status_code, r.text[:300])
            if r.status_code == 200 and r.json()["in_flight"] == 0 and not r.json()["rejected"]:
                return
            if r.status_code != 200:  # 200: some events still in flight (claims held)
                assert r.status_code in (429, 503) and r.headers["Retry-After"], last
            await asyncio.sleep(0.5)
        raise AssertionError(f"the batch was not applied within 90 s: {last}")

    try:
        async with serve(settings) as client:
            await _adopted_written(client)
            await settles(client, _batch(300))  # the driver's pool holds open connections
            batch = _batch(301)
            before = await _counters(api_settings)
            first = asyncio.ensure_future(
                client.post("/v1/events", json={"events": batch}, headers=h(key))
            )
            await asyncio.sleep(0.05)
            mongo_proxy.strand()
            assert (await first).status_code in (200, 503)
            await settles(client, batch)
            await _counted_once(api_settings, batch, before, "stranded")
            fresh = _batch(302)
            before = await _counters(api_settings)
            await settles(client, fresh)
            await _counted_once(api_settings, fresh, before, "after")
    finally:
        await os_proxy.close()
        await mongo_proxy.close()


async def test_a_batch_answered_503_while_the_engine_is_cut_is_applied_without_a_retry(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    """The engine's connections cut (like kill -9) under one post of a batch: answered 503,
    its client never posts it again. Once the engine answers, the API process applies it
    itself, once. (It was left to the recovery sweep, every events_recover_every_s: 300 s.)"""
    os_proxy, _, settings = await proxied(api_settings, events_recover_every_s=300.0)
    key = keys["write"]
    try:
        async with serve(settings) as client:
            warm = await client.post("/v1/events", json={"events": _batch(400)}, headers=h(key))
            assert warm.status_code == 200, warm.text  # every index ensured
            await _adopted_written(client)
            # the first recovery sweep (5 s after the start) is over: the next is 300 s away
            proc = client.app.state.runtime.discovery.writes._events
            swept, real = asyncio.Event(), proc.sweep

            async def sweep() -> None:
                await real()
                swept.set()

            proc.sweep = sweep
            with contextlib.suppress(TimeoutError):  # a slow start: it ran before the wrap
                await asyncio.wait_for(swept.wait(), 15)
            batch = _batch(401)
            before = await _counters(api_settings)
            await os_proxy.kill()
            r = await client.post("/v1/events", json={"events": batch}, headers=h(key))
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            await os_proxy.resume()
            mongo = clients.mongo_async(api_settings)
            try:
                events = mongo[api_settings.mongo_db]["events"]
                ids = [e["id"] for e in batch]
                for _ in range(120):  # 60 s
                    if await events.count_documents({"_id": {"$in": ids}, "applied": True}) == 30:
                        break
                    await asyncio.sleep(0.5)
            finally:
                await mongo.close()
            await _counted_once(api_settings, batch, before, "posted once")
    finally:
        await os_proxy.close()
