"""Event batches and their exactly-once check on the real servers, for the tests that kill or
pause a backend under event traffic (a module at the top of ``tests/``, importable from every
suite, like ``tcp_faults``): fresh members' impressions, likes and hides of four profiles;
whether every event is applied, and counted once — exposure, inbound likes, members' states
and blocks."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from opendisco import Settings, clients
from opendisco.signals import (
    BlockStore,
    ExposureStore,
    InboundCounter,
    UserStateStore,
    exposure_index,
)

__all__ = [
    "all_applied",
    "all_stored",
    "applied_once",
    "counters",
    "event_batch",
    "post_settled",
    "until",
]

Batch = list[dict[str, Any]]


def event_batch(items: Sequence[str]) -> Batch:
    """20 events of 4 fresh members on the 4 profiles ``items``: two impressions, a like, a
    click and a hide (which blocks the profile's owner) each."""
    tag = uuid.uuid4().hex[:6]
    out = []
    for u in range(4):
        mine = [*items[u:4], *items[:u]]
        kinds = ["impression", "impression", "like", "click", "hide"]
        picks = [mine[0], mine[1], mine[2], mine[2], mine[3]]
        out += [
            {"id": uuid.uuid4().hex, "type": k, "user_id": f"ev{tag}{u}", "item_id": i}
            for k, i in zip(kinds, picks, strict=True)
        ]
    return out


def _events_where(settings: Settings, batches: Sequence[Batch], **query: Any) -> tuple[int, int]:
    ids = [e["id"] for b in batches for e in b]
    with clients.mongo(settings) as mc:
        n = mc[settings.mongo_db]["events"].count_documents({"_id": {"$in": ids}, **query})
    return n, len(ids)


async def all_applied(settings: Settings, batches: Sequence[Batch]) -> bool:
    n, total = _events_where(settings, batches, applied=True)
    return n == total


async def all_stored(settings: Settings, batch: Batch) -> bool:
    n, total = _events_where(settings, [batch])
    return n == total


async def counters(settings: Settings, items: Sequence[str]) -> dict[str, Counter[str]]:
    """The exposure (impressions) and inbound (likes) counters of ``items``."""
    osc = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    try:
        expo = await ExposureStore(osc, settings).counts(list(items))
        inbound = await InboundCounter(mongo[settings.mongo_db]).counts(list(items))
        return {"exposure": Counter(expo), "inbound": Counter(inbound)}
    finally:
        await osc.close()
        await mongo.close()


async def applied_once(
    settings: Settings,
    batches: Sequence[Batch],
    before: Mapping[str, Counter[str]],
    owners: Mapping[str, str],
) -> None:
    """Every event of ``batches`` applied exactly once since ``before`` (``owners``: each
    event item's owner, whom a hide blocks)."""
    events = [e for b in batches for e in b]
    after = await counters(settings, list(owners))
    for name, kind in (("exposure", "impression"), ("inbound", "like")):
        want = Counter(e["item_id"] for e in events if e["type"] == kind)
        got = Counter({i: after[name][i] - before[name][i] for i in owners})
        if +got != want:
            try:
                why = await _writers(settings, events, list(owners))
            except Exception as exc:  # the counts' assertion is what matters
                why = {"unreadable": repr(exc)}
            raise AssertionError((name, got, want, why))
    members = {e["user_id"] for e in events}
    mongo = clients.mongo_async(settings)
    try:
        db = mongo[settings.mongo_db]
        states = await UserStateStore(db).get_many(members)
        blocks = BlockStore(db)
        assert set(states) == members
        for u, st in states.items():
            mine = [e for e in events if e["user_id"] == u]
            assert sorted(st.applied) == sorted(e["id"] for e in mine), u
            assert st.n_likes == sum(e["type"] == "like" for e in mine), u
            hidden = {owners[e["item_id"]] for e in mine if e["type"] == "hide"}
            assert hidden <= set((await blocks.get(u)).blocked), u
    finally:
        await mongo.close()


async def _writers(settings: Settings, events: Batch, items: list[str]) -> dict[str, Any]:
    """What tells a double count's path: each counter's marks (``fenced``: those a fence put
    there) and, per event, how many holders it had (their marks) and what they recorded."""
    osc = clients.async_opensearch(settings)
    try:
        resp = await osc.mget(
            index=exposure_index(settings),
            body={"ids": items},
            params={"_source_includes": "count,marks,fenced"},
        )
        docs = {d["_id"]: d.get("_source") for d in resp["docs"]}
    finally:
        await osc.close()
    with clients.mongo(settings) as mc:
        stored = mc[settings.mongo_db]["events"].find(
            {"_id": {"$in": [e["id"] for e in events]}},
            projection={"claim_marks": 1, "claim_gen": 1, "done": 1},
        )
        holders = Counter(
            (d.get("claim_gen"), tuple(d.get("claim_marks") or ()), tuple(d.get("done") or ()))
            for d in stored
        )
    return {"counters": docs, "holders": {str(k): n for k, n in holders.items() if k[0]}}


async def post_settled(
    client: Any, batch: Batch, key: str, posts: list[tuple[float, float, int, str]]
) -> float:
    """Post ``batch`` (an httpx client of the API) until an answer says every event is done,
    as a client that retries on 503 / 429 / a cut connection; each answer in ``posts``
    (start, end, status, text). Never a 5xx but 503 with ``Retry-After``. The time it was
    settled."""
    for _ in range(400):
        start = time.monotonic()
        try:
            r = await client.post("/v1/events", json={"events": batch}, headers={"X-API-Key": key})
        except httpx.HTTPError as exc:
            posts.append((start, time.monotonic(), 0, repr(exc)))
            await asyncio.sleep(0.5)
            continue
        posts.append((start, time.monotonic(), r.status_code, r.text[:300]))
        if r.status_code == 200:
            body = r.json()
            assert not body["rejected"], body
            if body["in_flight"] == 0:
                return time.monotonic()
        else:
            assert r.status_code in (429, 503), (r.status_code, r.text)
            assert r.headers.get("retry-after"), r.headers
        await asyncio.sleep(0.5)
    raise AssertionError(f"a batch never settled: {posts[-3:]}")


async def until(what: Callable[[], Awaitable[bool]], timeout: float, why: str) -> float:
    """Wait (polling every 0.5 s; a failing poll counts as false) until ``what()`` is true;
    the time it was."""
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if await what():
                return time.monotonic()
        assert time.monotonic() < end, why
        await asyncio.sleep(0.5)
