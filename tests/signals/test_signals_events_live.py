"""Events against the real servers: idempotency, rejection, user vector, graph, exposure caps."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from opendisco import Settings
from opendisco.signals import EVENTS, EventProcessor, ItemGraph, UserGraph, UserStateStore

CAPPED_ITEM = "cap0"  # see conftest.catalogue


def _ev(user: str, kind: str, item: str, **kw: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "type": kind, "user_id": user, "item_id": item, **kw}


def _uid() -> str:
    return f"u{uuid.uuid4().hex[:8]}"


async def test_duplicates_counted_once(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    user = _uid()
    batch = [_ev(user, "impression", "beta3"), _ev(user, "like", "beta4")]
    before = (await proc.exposure.counts(["beta3"]))["beta3"]
    first = await proc.apply([*batch, batch[0]])  # in-batch duplicate too
    assert (first.accepted, first.duplicates, first.rejected) == (2, 1, [])
    again = await proc.apply(batch)
    assert (again.accepted, again.duplicates) == (0, 2)
    # a repeat of an event rejected is rejected with it, never counted a duplicate (read as
    # applied, nothing stored for it: bench/chaos.py, seed 31)
    unknown = _ev(user, "like", f"nowhere{uuid.uuid4().hex[:6]}")
    res = await proc.apply([unknown, batch[1], dict(unknown)])
    assert (res.accepted, res.duplicates, [i for i, _ in res.rejected]) == (0, 1, [0, 2]), res
    assert res.rejected[0][1] == res.rejected[1][1] and "unknown item" in res.rejected[0][1]
    assert (await proc.exposure.counts(["beta3"]))["beta3"] == before + 1
    st = await UserStateStore(clustered_db).get(user)
    assert [p["id"] for p in st.positives] == ["beta4"]
    assert await clustered_db[EVENTS].count_documents({"user_id": user}) == 2


async def test_an_id_reused_for_another_event_is_rejected_not_a_duplicate(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    """A retry repeats its event; an id posted for another item, member or type (a client
    bug, or another client's ids: one namespace for every key) is rejected with the reason,
    not counted as a duplicate of what it is not — in the store and inside one batch."""
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    user, stranger = _uid(), _uid()
    first = _ev(user, "like", "beta5")
    assert (await proc.apply([first])).accepted == 1
    for reused in ({**first, "item_id": "beta6"}, {**first, "user_id": stranger}):
        res = await proc.apply([reused])  # another item, another member
        assert (res.accepted, res.duplicates, [i for i, _ in res.rejected]) == (0, 0, [0]), res
        if reused["user_id"] == user:  # the member's own event is named
            assert "already used by another event ('like'" in res.rejected[0][1]
        else:  # another member's is not (what it is about is theirs)
            assert "another member's event" in res.rejected[0][1]
            assert user not in res.rejected[0][1] and "beta5" not in res.rejected[0][1]
    assert (await proc.apply([dict(first)])).duplicates == 1  # the retry
    twice = _ev(user, "impression", "beta3")
    res = await proc.apply([twice, {**twice, "type": "click"}, dict(twice)])
    assert (res.accepted, res.duplicates, [i for i, _ in res.rejected]) == (1, 1, [1]), res
    assert "already used by another event ('impression'" in res.rejected[0][1]
    st = await UserStateStore(clustered_db).get(user)
    assert [p["id"] for p in st.positives] == ["beta5"]
    assert await clustered_db[EVENTS].count_documents({"user_id": stranger}) == 0
    stored = await clustered_db[EVENTS].find_one({"_id": first["id"]})
    assert stored is not None and stored["item_id"] == "beta5"


async def test_malformed_events_rejected_and_nothing_applied(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    user = _uid()
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    batch = [
        _ev(user, "like", "gamma1"),
        {"id": "x1", "user_id": user, "item_id": "gamma2"},  # no type
        _ev(user, "like", "no-such-item"),
        _ev(user, "like", "gamma3", ts=future),
        _ev(user, "teleport", "gamma4"),
        _ev(user, "impression", "gamma5", extra_field=1),
        "not an object",
    ]
    res = await proc.apply(batch)
    assert res.accepted == 1
    reasons = dict(res.rejected)
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert "type" in reasons[1] and "unknown item" in reasons[2] and "future" in reasons[3]
    assert "extra_field" in reasons[5]
    stored = await clustered_db[EVENTS].find({"user_id": user}).to_list(None)
    assert [d["item_id"] for d in stored] == ["gamma1"]
    assert all(d["applied"] for d in stored)
    st = await UserStateStore(clustered_db).get(user)
    assert st.seen == ["gamma1"]
    assert (await proc.exposure.counts(["gamma5"]))["gamma5"] == 0


async def test_interrupted_claim_is_reapplied_once(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    user = _uid()
    ev = _ev(user, "like", "alpha7")
    # a previous call claimed the event and died before applying it
    await clustered_db[EVENTS].insert_one(
        {"_id": ev["id"], "type": "like", "user_id": user, "item_id": "alpha7", "applied": False}
    )
    res = await proc.apply([ev])
    assert (res.accepted, res.recovered, res.duplicates) == (0, 1, 0)
    res2 = await proc.apply([ev])
    assert (res2.accepted, res2.recovered, res2.duplicates) == (0, 0, 1)
    st = await UserStateStore(clustered_db).get(user)
    assert [p["id"] for p in st.positives] == ["alpha7"]


async def test_a_call_that_takes_a_claim_over_later_counts_its_items_again(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    """A call applies its own event, waits for one another call holds, and takes it over
    when that claim expires: both are impressions of one item. The second write is the
    call's own too, not a re-send of the first, so the counter adds it (a write's mark is
    the write's, not the call's: a counter ignores a mark it keeps)."""
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    mine, held = _ev(_uid(), "impression", "gamma3"), _ev(_uid(), "impression", "gamma3")
    await clustered_db[EVENTS].insert_one(  # held by a call that stops renewing it
        {
            "_id": held["id"],
            "type": "impression",
            "user_id": held["user_id"],
            "item_id": "gamma3",
            "applied": False,
            "claim_owner": "another call",
            "claim_gen": 0,
            "claim_expires": datetime.now(UTC) + timedelta(seconds=1),
        }
    )
    before = (await proc.exposure.counts(["gamma3"]))["gamma3"]
    res = await proc.apply([mine, held])
    assert (res.accepted, res.recovered, res.in_flight) == (1, 1, 0), res
    assert (await proc.exposure.counts(["gamma3"]))["gamma3"] == before + 2


async def test_user_vector_is_decayed_mean_of_positives_minus_negatives(
    clustered_settings: Settings,
    clustered_db: Any,
    clustered_os: Any,
    clustered_items: list[dict[str, Any]],
) -> None:
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    vec = {it["id"]: np.asarray(it["embedding"]) for it in clustered_items}
    user = _uid()
    now = datetime.now(UTC)
    await proc.apply([_ev(user, "like", "alpha1", ts=now.isoformat())], now=now)
    st = await UserStateStore(clustered_db).get(user)
    np.testing.assert_allclose(st.vector, vec["alpha1"] / np.linalg.norm(vec["alpha1"]), atol=1e-6)
    await proc.apply([_ev(user, "hide", "beta1", ts=now.isoformat())], now=now)
    st = await UserStateStore(clustered_db).get(user)
    expected = vec["alpha1"] - 0.5 * vec["beta1"]
    np.testing.assert_allclose(st.vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert "beta1" in st.blocked and st.fatigue == {"beta": 1.0}
    assert st.behaviour is not None and len(st.behaviour) == clustered_settings.behaviour_dim


async def test_graph_co_engagement_and_mutual_likes(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    u = _uid()
    await proc.apply([_ev(u, "like", "gamma10"), _ev(u, "click", "gamma11")])
    await proc.apply([_ev(u, "like", "beta12")])
    g = ItemGraph(clustered_db)
    nb = await g.weights(["gamma10"])
    assert nb.get("gamma11") == 1.0 and nb.get("beta12") == 1.0
    assert await g.proximity(["gamma10", "gamma11"], ["beta12", "alpha0"]) == {"beta12": 2.0}
    # person0 likes person1's profile and back: a mutual like
    r1 = await proc.apply([_ev("person0", "like", "prof1")])
    assert r1.mutual == []
    r2 = await proc.apply([_ev("person1", "like", "prof0")])
    assert r2.mutual == [("person1", "person0")]
    assert await UserGraph(clustered_db).mutual("person0") == ["person1"]


async def test_a_serving_graph_keeps_rows_it_read_and_its_writes_never_read_them(
    clustered_db: Any,
) -> None:
    """``cache_s``: a request's rows are kept (a soft signal, stale at most ``cache_s``), an
    item without a row is kept as such, and :meth:`ItemGraph.add` read-modify-writes from
    the store, never from the cache, so no increment is lost behind a cached row."""
    a, b, c, none = (f"gc{uuid.uuid4().hex[:8]}" for _ in range(4))
    store = ItemGraph(clustered_db)
    # the cache's clock is the test's: on the wall clock, a store slower than 0.5 s over the
    # reads and writes below expired the rows the test expects kept
    now = [1_000_000.0]
    cached = ItemGraph(clustered_db, cache_s=0.5, clock=lambda: now[0])
    await store.add([(a, b, 1.0)])
    assert await cached.weights_of([a], [none]) == [{b: 1.0}, {}]
    await cached.add([(a, b, 1.0), (a, c, 1.0)])  # through the cached graph: from the store
    assert await store.weights([a]) == {b: 2.0, c: 1.0}
    assert await cached.weights([a]) == {b: 1.0}  # the row it read, kept
    await store.add([(none, c, 1.0)])
    assert await cached.weights([none]) == {}  # no row was an answer too, kept
    now[0] += 0.6
    assert await cached.weights([a]) == {b: 2.0, c: 1.0}
    assert await cached.proximity([a, none], [c]) == {c: 2.0}


async def test_counters_reach_caps_and_capped_items_disappear(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    from opendisco.signals import capped_lookup

    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    query = {"query": {"bool": {"must_not": [capped_lookup(clustered_settings)]}}, "size": 100}

    async def visible() -> set[str]:
        resp = await clustered_os.search(index=clustered_settings.index_alias, body=query)
        return {h["_id"] for h in resp["hits"]["hits"]}

    assert CAPPED_ITEM in await visible()
    for n in range(1, 4):
        res = await proc.apply([_ev(_uid(), "impression", CAPPED_ITEM)])
        assert (CAPPED_ITEM in res.capped) == (n >= 3)
    assert (await proc.exposure.counts([CAPPED_ITEM]))[CAPPED_ITEM] == 3
    assert CAPPED_ITEM not in await visible()


async def test_graph_neighbours_skip_what_the_member_has_seen(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    from opendisco.signals import RECENT_FANOUT, ItemGraph, top_neighbours

    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    a, b = _uid(), _uid()
    await proc.apply([_ev(a, "like", "alpha15"), _ev(a, "like", "beta15")])
    await proc.apply([_ev(b, "like", "alpha15")])
    st = await UserStateStore(clustered_db).get(b)
    recent = st.recent_positive_ids[:RECENT_FANOUT]
    seen = [*st.blocked, *st.seen, *st.liked]
    nb = top_neighbours(await ItemGraph(clustered_db).weights(recent), 50, [*recent, *seen])
    assert nb and nb[0][0] == "beta15"
    assert all(i not in seen and i not in recent for i, _ in nb)


async def test_large_multi_user_batch_applies(
    clustered_settings: Settings,
    clustered_db: Any,
    clustered_os: Any,
    clustered_items: list[dict[str, Any]],
) -> None:
    # > 100 events, > 100 graph edges: every bulk write is chunked (FerretDB hangs otherwise)
    ids = [it["id"] for it in clustered_items][:40]
    tag = uuid.uuid4().hex[:6]
    events = [
        _ev(f"big{tag}{u}", "like", (ids[:20] if u % 2 else ids[20:])[(u * 7 + j * 3) % 20])
        for u in range(30)
        for j in range(6)
    ]
    res = await EventProcessor(clustered_settings, clustered_db, clustered_os).apply(events)
    assert (res.accepted, res.rejected) == (180, [])
    assert (
        await clustered_db[EVENTS].count_documents(
            {"user_id": {"$regex": f"^big{tag}"}, "applied": True}
        )
        == 180
    )


async def test_graph_batched_equals_one_event_per_call(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    # the same 5 likes applied as one batch (coalesced upserts per item) or one call per like
    # add the same co-engagement weights: every pair of the 5 items once per user
    items = [f"beta{j}" for j in range(13, 18)]
    g = ItemGraph(clustered_db)
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)

    async def snapshot() -> dict[str, dict[str, float]]:
        return {i: await g.weights([i]) for i in items}

    def delta(
        a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]
    ) -> dict[tuple[str, str], float]:
        return {(i, j): b[i].get(j, 0.0) - a[i].get(j, 0.0) for i in items for j in items if i != j}

    now = datetime.now(UTC)
    likes = [(item, (now - timedelta(minutes=10 - j)).isoformat()) for j, item in enumerate(items)]
    s0 = await snapshot()
    batched = _uid()
    res = await proc.apply([_ev(batched, "like", i, ts=ts) for i, ts in likes], now=now)
    assert res.accepted == 5
    s1 = await snapshot()
    one = _uid()
    for i, ts in likes:
        await proc.apply([_ev(one, "like", i, ts=ts)], now=now)
    s2 = await snapshot()
    assert delta(s0, s1) == {pair: 1.0 for pair in delta(s0, s1)}
    assert delta(s1, s2) == delta(s0, s1)


async def test_inbound_attention_counts_profiles_only(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    from opendisco.signals import InboundCounter

    inbound = InboundCounter(clustered_db)
    before = await inbound.counts(["prof2", "gamma18"])
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    await proc.apply([_ev(_uid(), "like", "prof2"), _ev(_uid(), "like", "gamma18")])
    after = await inbound.counts(["prof2", "gamma18"])
    assert after.get("prof2", 0) == before.get("prof2", 0) + 1
    assert after.get("gamma18", 0) == before.get("gamma18", 0) == 0


async def test_concurrent_graph_writers_lose_no_increment(clustered_db: Any) -> None:
    # FerretDB updates are read-modify-write: without the item leases, two batches adding to the
    # same source item at once would drop one of them
    g = ItemGraph(clustered_db)
    tag = uuid.uuid4().hex[:6]
    hub, others = f"hub{tag}", [f"n{tag}{j}" for j in range(6)]
    await asyncio.gather(*(g.add([(hub, o, 1.0)]) for o in others for _ in range(3)))
    assert await g.weights([hub]) == {o: 3.0 for o in others}
    for o in others:
        assert await g.weights([o]) == {hub: 3.0}
