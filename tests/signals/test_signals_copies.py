"""A process's copies of inbound attention and member tastes (``signals._copies``) on the real
store: they answer what the store answers, pick up other writers' changes by ``at``, catch
documents written without it on the full read, and hand out nothing when stale or too big."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from signals_support import Clock

from opendisco import Settings, clients
from opendisco.signals import INBOUND, MEMBER_TASTES, InboundCounter, UserState, UserStateStore
from opendisco.signals._inbound import InboundCopy
from opendisco.signals._taste_copy import TasteCopy


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Any]:
    client = clients.mongo_async(settings)
    name = f"{settings.mongo_db}cp"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


async def test_inbound_copy_counts_what_the_store_counts(db: Any) -> None:
    now = datetime.now(UTC)
    counter = InboundCounter(db)
    await counter.add([("a", now), ("a", now), ("b", now)])
    clock = Clock()
    copy = InboundCopy(db, every_s=1.0, max_items=100, clock=clock)
    assert copy.counts(["a"]) is None  # no copy yet: read the store
    await copy.refresh()
    ids = ["a", "b", "never"]
    assert copy.counts(ids) == await counter.counts(ids) == {"a": 2, "b": 1}
    # another process's writes arrive by `at`; a document written without it (older code)
    # only with the next full read
    await InboundCounter(db).add([("a", now), ("c", now)])
    day = now.strftime("%Y%m%d")
    await db[INBOUND].update_one({"_id": "old"}, {"$inc": {f"d.{day}": 4}}, upsert=True)
    clock.t += 1.0
    await copy.refresh()
    assert copy.counts(["a", "c", "old"]) == {"a": 3, "c": 1}
    clock.t += copy.full_every_s
    await copy.refresh()
    assert copy.counts(["a", "c", "old"]) == {"a": 3, "c": 1, "old": 4}
    clock.t += copy.stale_s + 0.1  # no refresh for too long: stale, read the store
    assert copy.counts(["a"]) is None


async def test_inbound_copy_is_not_kept_over_its_size(db: Any) -> None:
    now = datetime.now(UTC)
    await InboundCounter(db).add([("a", now), ("b", now), ("c", now)])
    copy = InboundCopy(db, every_s=1.0, max_items=2, clock=Clock())
    await copy.refresh()
    assert copy.items is None and copy.counts(["a"]) is None


def _state(user: str, seed: int, likes: int) -> UserState:
    vec = np.random.default_rng(seed).normal(size=8).astype(np.float32).tolist()
    return UserState(user_id=user, vector=vec, n_likes=likes, n_passes=1)


async def test_taste_copy_answers_what_the_store_answers(db: Any) -> None:
    store = UserStateStore(db)
    await store.save(_state("m1", 1, 3))
    await store.save_many([_state("m2", 2, 5)])
    clock = Clock()
    copy = TasteCopy(db, every_s=1.0, max_items=100, clock=clock)
    await copy.refresh()
    stored, copied = await store.tastes(["m1", "m2", "m3"]), copy.tastes(["m1", "m2", "m3"])
    assert copied is not None and set(copied) == set(stored) == {"m1", "m2"}
    for m in ("m1", "m2"):
        assert np.array_equal(copied[m][0], stored[m][0]) and copied[m][1:] == stored[m][1:]
    # a taste changed by another process arrives with the next read
    await UserStateStore(db).save(_state("m1", 7, 4))
    await db[MEMBER_TASTES].insert_one({"_id": "old", "n_likes": 9, "n_passes": 0})
    clock.t += 1.0
    await copy.refresh()
    got = copy.tastes(["m1", "old"])
    assert got is not None and got["m1"][1] == 4 and "old" not in got
    assert np.array_equal(got["m1"][0], (await store.tastes(["m1"]))["m1"][0])
    clock.t += copy.full_every_s
    await copy.refresh()
    got = copy.tastes(["old"])
    assert got is not None and got["old"][1:] == (9, 0)
