"""User state math (pure) and concurrent writers (live)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from opendisco import Settings
from opendisco.rerank import Features, Reranker
from opendisco.signals import (
    EventProcessor,
    UserState,
    UserStateConfig,
    UserStateStore,
    decayed_vector,
    merge_events,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _e(eid: str, kind: str, item: str, w: float, hours_ago: float = 0.0) -> dict[str, Any]:
    return {
        "id": eid,
        "type": kind,
        "item_id": item,
        "weight": w,
        "ts": NOW - timedelta(hours=hours_ago),
    }


def test_a_like_outlives_the_seen_window() -> None:
    """``seen`` and the recent lists are bounded (most recent); a liked item stays in
    ``liked`` after newer likes and passes push it out of both, a passed one does not, and
    the state round-trips through its document (an old document without ``liked`` reads)."""
    cfg = UserStateConfig(max_recent=2, max_seen=4, max_liked=3)
    st = merge_events(UserState("u"), [_e("l0", "like", "x", 1.0, 9)], {}, cfg)
    st = merge_events(st, [_e("p0", "pass", "y", -1.0, 8)], {}, cfg)
    later = [_e(f"l{i}", "like", f"a{i}", 1.0, 7 - i) for i in range(1, 3)]
    later += [_e(f"p{i}", "pass", f"b{i}", -1.0, 5 - i) for i in range(1, 5)]
    st = merge_events(st, later, {}, cfg)
    recent = {e["id"] for e in (*st.positives, *st.negatives)}
    assert "x" not in st.seen and "x" not in recent  # out of every bounded window
    assert st.liked == ["x", "a1", "a2"] and "y" not in st.liked
    st = merge_events(st, [_e("l9", "like", "a9", 1.0)], {}, cfg)
    assert st.liked == ["a1", "a2", "a9"]  # max_liked: the most recent
    assert UserState.from_doc(st.to_doc()).liked == st.liked
    old = {k: v for k, v in st.to_doc().items() if k != "liked"}
    assert UserState.from_doc(old).liked == []


def test_merge_is_idempotent_by_event_id() -> None:
    cfg = UserStateConfig()
    evs = [_e("a", "like", "x", 1.0), _e("b", "hide", "y", -1.0), _e("c", "impression", "z", 0)]
    once = merge_events(UserState("u"), evs, {"y": "cat"}, cfg)
    twice = merge_events(once, evs, {"y": "cat"}, cfg)
    assert once == twice
    assert [p["id"] for p in once.positives] == ["x"]
    assert [n["id"] for n in once.negatives] == ["y"]
    assert once.blocked == ["y"] and once.seen == ["x", "y", "z"] and once.fatigue == {"cat": 1.0}


def test_recent_lists_are_bounded_and_newest_kept() -> None:
    cfg = UserStateConfig(max_recent=3)
    evs = [_e(f"e{i}", "like", f"i{i}", 1.0, hours_ago=10 - i) for i in range(6)]
    st = merge_events(UserState("u"), evs, {}, cfg)
    assert [p["id"] for p in st.positives] == ["i3", "i4", "i5"]


def test_decay_halves_weight_per_half_life() -> None:
    cfg = UserStateConfig(half_life_hours=10.0, negative_weight=0.0)
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    pos = [{"id": "a", "ts": NOW - timedelta(hours=10), "w": 1.0}, {"id": "b", "ts": NOW, "w": 1.0}]
    v = np.asarray(decayed_vector(pos, [], vecs, NOW, cfg))
    # weights 0.5 and 1.0 → direction (0.5, 1)
    np.testing.assert_allclose(v, np.array([0.5, 1.0]) / np.linalg.norm([0.5, 1.0]))
    assert decayed_vector([], [], vecs, NOW, cfg) is None


async def test_concurrent_writers_of_one_user_lose_nothing(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    items = [f"{c}{j}" for c in ("alpha", "beta") for j in range(4)]
    procs = [EventProcessor(clustered_settings, clustered_db, clustered_os) for _ in items]
    results = await asyncio.gather(
        *(
            p.apply([{"id": uuid.uuid4().hex, "type": "like", "user_id": user, "item_id": i}])
            for p, i in zip(procs, items, strict=True)
        )
    )
    assert [r.accepted for r in results] == [1] * len(items)
    st = await UserStateStore(clustered_db).get(user)
    assert sorted(p["id"] for p in st.positives) == sorted(items)
    assert st.version == len(items)


def test_reranker_accepts_candidate_objects() -> None:
    from opendisco.queries import Candidate

    cands = [
        Candidate(f"c{i}", {"knn": 0.5}, {"knn": i + 1}, 1.0 - i / 10, {"category": "x"})
        for i in range(5)
    ]
    res = Reranker().run(cands, Features.empty(5, 4, 4))
    assert res.ids == [f"c{i}" for i in range(5)]


async def test_expired_lease_of_a_crashed_writer_is_taken_over(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    from opendisco.signals import USER_LOCKS

    user = f"u{uuid.uuid4().hex[:8]}"
    past = datetime.now(UTC) - timedelta(seconds=1)
    await clustered_db[USER_LOCKS].insert_one({"_id": user, "owner": "dead", "expires": past})
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    res = await proc.apply(
        [{"id": uuid.uuid4().hex, "type": "like", "user_id": user, "item_id": "beta1"}]
    )
    assert res.accepted == 1
    assert [p["id"] for p in (await UserStateStore(clustered_db).get(user)).positives] == ["beta1"]
    assert await clustered_db[USER_LOCKS].count_documents({"_id": user}) == 0


async def test_state_vectors_are_stored_as_bson_vectors_and_older_states_still_read(
    async_db: Any,
) -> None:
    """The taste and behaviour vectors go to MongoDB as BSON float32 vectors (FerretDB parses
    an array of doubles number by number: ~3 ms per 384-d state read); a state written before,
    with arrays, still reads. Each save also writes the member's taste alone, which is what
    ``tastes`` (others' requests) reads."""
    from bson.binary import Binary

    from opendisco.signals import MEMBER_TASTES, USER_STATE

    store = UserStateStore(async_db)
    tag = uuid.uuid4().hex[:8]
    new_id, old_id, bad_id, many_id = (f"{w}-{tag}" for w in ("new", "old", "bad", "many"))
    taste = [0.1, -0.25, 0.5, 0.125]
    await store.save(UserState(new_id, vector=taste, behaviour=[1.0, 2.0], n_likes=3))
    raw = await async_db[USER_STATE].find_one({"_id": new_id})
    assert isinstance(raw["vector"], Binary) and raw["vector"].subtype == 9
    assert isinstance(raw["behaviour"], Binary)
    assert set(await async_db[MEMBER_TASTES].find_one({"_id": new_id})) == {
        "_id", "vector", "n_likes", "n_passes", "at",
    }  # fmt: skip
    await async_db[USER_STATE].insert_one(
        {"_id": old_id, "vector": taste, "behaviour": None, "n_likes": 1, "n_passes": 2}
    )
    await async_db[USER_STATE].insert_one({"_id": bad_id, "vector": "not a vector"})
    new, old = await store.get(new_id), await store.get(old_id)
    assert new.vector == taste and new.behaviour == [1.0, 2.0] and new.n_likes == 3
    assert old.vector == taste and old.behaviour is None
    assert (await store.get(bad_id)).vector is None
    await store.save_many([replace(old, n_passes=4), UserState(many_id, n_likes=1)])
    tastes = await store.tastes([new_id, old_id, bad_id, many_id, f"nobody-{tag}"])
    assert set(tastes) == {new_id, old_id, many_id}  # bad_id: no save since, no taste
    for who in (new_id, old_id):
        np.testing.assert_allclose(tastes[who][0], taste)
    assert tastes[new_id][1:] == (3, 0) and tastes[old_id][1:] == (1, 4)
    assert tastes[many_id] == (None, 1, 0)
    # a state saved again after it was read keeps the same vector (no drift through float32)
    await store.save(new)
    assert (await store.get(new_id)).vector == taste
    # the taste document is written only when the taste changed since the previous state
    await async_db[MEMBER_TASTES].delete_one({"_id": new_id})
    seen_only = replace(new, seen=["x"])
    await store.save_many([seen_only], previous={new_id: new})
    assert await async_db[MEMBER_TASTES].find_one({"_id": new_id}) is None
    await store.save_many([replace(seen_only, n_passes=1)], previous={new_id: seen_only})
    assert (await store.tastes([new_id]))[new_id][1:] == (3, 1)
