"""The served page re-checked against MongoDB (``serving._page``), on the real servers: what
the engine's copy still shows — no sync ran since the store changed — is not served. The last
test is pure: :func:`pick_page`'s rounds with an in-memory :class:`Recheck` (which ids are read
when), no store involved."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from opendisco.serving import Discovery, Explorer, HardRules, Rule
from opendisco.serving._page import LOOKAHEAD, MAX_ROUNDS, Reread, pick_page


def _open_viewer(users: list[dict[str, Any]]) -> dict[str, Any]:
    """A member open to every gender and a wide age range, whose list is long."""
    open_ = [u for u in users if len(u["pref_genders"]) == 3]
    return sorted(open_, key=lambda u: u["pref_age_min"] - u["pref_age_max"])[1]


def _always_explored(discovery: Any, seed: int) -> Discovery:
    """The same pipeline with every answer explored."""
    explorer = Explorer(rate=1.0, rng=np.random.default_rng(seed))
    return Discovery(
        discovery.settings,
        discovery.os,
        discovery.db,
        model=discovery.encoder.model,
        explorer=explorer,
    )


@pytest.fixture
async def changed_in_store(discovery: Any, market: Any) -> Any:
    """Three of a member's first five changed in MongoDB only (the index keeps its copies):
    one paused (``available: false``), one deleted outright, one no longer open to the
    member's gender. Restored afterwards (the market is shared by the session)."""
    _, users = market
    viewer = _open_viewer(users)
    first = await discovery.recommend(viewer["_id"], k=5)
    paused, gone, closed = first.ids[:3]
    coll = discovery.db[discovery.settings.items_collection]
    originals = [await coll.find_one({"_id": i}) for i in (paused, gone, closed)]
    others = sorted({u["gender"] for u in users} - {viewer["gender"]})
    await coll.update_one({"_id": paused}, {"$set": {"available": False}})
    await coll.delete_one({"_id": gone})
    await coll.update_one({"_id": closed}, {"$set": {"pref_genders": others}})
    yield viewer, {paused, gone, closed}
    for doc in originals:
        await coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)


async def test_what_the_store_changed_since_the_last_sync_is_not_served(
    discovery: Any, changed_in_store: Any
) -> None:
    viewer, changed = changed_in_store
    v = viewer["_id"]
    recs = await discovery.recommend(v, k=10, explain=True)
    assert not changed & set(recs.ids)
    assert len(recs.ids) == 10  # the page was filled from the rest of the order
    assert recs.explain["filtered"]["available"] >= 2 and recs.explain["filtered"]["eligibility"]
    # the engine's copy alone still shows all three (the same pipeline without the re-check)
    engine_only = Discovery(
        discovery.settings.model_copy(update={"serve_recheck": False}),
        discovery.os,
        discovery.db,
        model=discovery.encoder.model,
    )
    assert changed <= set((await engine_only.recommend(v, k=10)).ids)
    # an explored page is drawn again from the order without them
    explored = _always_explored(discovery, 3)
    for _ in range(5):
        recs = await explored.recommend(v, k=10)
        assert recs.explored and len(recs.ids) == 10 and not changed & set(recs.ids)
    await explored.drain()


def _engine_only(discovery: Any) -> Discovery:
    """The same pipeline without the re-check: the engine's copy alone."""
    return Discovery(
        discovery.settings.model_copy(update={"serve_recheck": False}),
        discovery.os,
        discovery.db,
        model=discovery.encoder.model,
    )


@pytest.fixture
async def half_paused(discovery: Any, market: Any) -> Any:
    """Every other item of a member's first ``2 * LOOKAHEAD`` pages of 10 (the engine's
    order) paused in MongoDB only; restored afterwards."""
    _, users = market
    viewer = _open_viewer(users)
    top = (await _engine_only(discovery).recommend(viewer["_id"], k=10 * LOOKAHEAD)).ids
    assert len(top) == 10 * LOOKAHEAD
    paused = top[1::2]
    coll = discovery.db[discovery.settings.items_collection]
    await coll.update_many({"_id": {"$in": paused}}, {"$set": {"available": False}})
    yield viewer, set(paused)
    await coll.update_many({"_id": {"$in": paused}}, {"$set": {"available": True}})


async def test_a_page_stays_full_when_the_store_changed_much(
    discovery: Any, half_paused: Any
) -> None:
    """Half the engine's first pages paused in the store since the last sync: the page is
    still full (it was 9 of 10: each pick re-read only its replacements, half of which were
    paused too, until the rounds ran out), and an explored page is still an explored page,
    logged with the pool and propensities it was drawn with (9 of 10 were cut to the checked
    survivors and logged as deterministic answers, propensity 1, though the coin said
    explore)."""
    viewer, paused = half_paused
    v = viewer["_id"]
    recs = await discovery.recommend(v, k=10, explain=True)
    assert len(recs.ids) == 10 and not paused & set(recs.ids)
    assert recs.explain["filtered"]["available"] >= 5
    explored = _always_explored(discovery, 5)
    for _ in range(10):
        recs = await explored.recommend(v, k=10)
        assert recs.explored and len(recs.ids) == 10 and not paused & set(recs.ids)
        served = recs.served
        assert [served.ids[r] for r in served.shown] == recs.ids
        assert served.explored and len(served.propensity) == 10
        assert set(served.shown) <= set(served.pool)
        assert not paused & {served.ids[r] for r in served.pool}
    await explored.drain()


@pytest.mark.parametrize("odd", [["f", "m", "x"], {"gender": "f"}])
async def test_an_odd_gender_in_the_store_is_dropped_not_a_failure(
    discovery: Any, market: Any, odd: Any
) -> None:
    """A profile whose stored ``gender`` is a list or a document (the index kept its valid
    copy: sync refuses the document) is not eligible for a viewer with gender preferences;
    it raised ``TypeError: unhashable type`` — the member's request failed (the API
    degraded it and counted a breaker failure) for as long as the document stayed so."""
    _, users = market
    viewer = _open_viewer(users)
    first = await discovery.recommend(viewer["_id"], k=5)
    odd_id = first.ids[0]
    coll = discovery.db[discovery.settings.items_collection]
    original = await coll.find_one({"_id": odd_id})
    await coll.update_one({"_id": odd_id}, {"$set": {"gender": odd}})
    try:
        recs = await discovery.recommend(viewer["_id"], k=5, explain=True)
        assert len(recs.ids) == 5 and odd_id not in recs.ids
        assert recs.explain["filtered"]["eligibility"] >= 1
    finally:
        await coll.replace_one({"_id": odd_id}, original)


class _Order:
    """A reranked order of ``n`` rows as :func:`pick_page` reads it."""

    def __init__(self, n: int) -> None:
        self.order = np.arange(n)
        self.scores = np.linspace(1.0, 0.0, n)
        self.batch = type("B", (), {"ids": [f"i{r}" for r in range(n)]})()


class _Broken:
    """An in-memory :class:`Recheck` (not a store): ``broken`` ids break ``available``; it
    records which ids each pick asked for."""

    def __init__(self, broken: set[str]) -> None:
        self.broken, self.reads = broken, []

    async def __call__(self, rules: HardRules, ids: list[str]) -> Reread:
        self.reads.append(ids)
        return Reread({i: Rule.AVAILABLE for i in ids if i in self.broken}, {})


async def test_a_page_is_never_an_unchecked_item() -> None:
    """Each pick reads only what it did not check; after MAX_ROUNDS picks that each dropped
    something, the page is the checked survivors (shorter), never an unchecked row."""
    rules = HardRules.anonymous()
    store = _Broken({"i1", "i4"})
    page = await pick_page(_Order(20), 4, rules, recheck=store)
    assert page.rows.tolist() == [0, 2, 3, 5]
    # the pick after the drop reads ahead: the unchecked rows of the first LOOKAHEAD pages
    assert store.reads == [["i0", "i1", "i2", "i3"], ["i4", "i5", "i6", "i7", "i8"]]
    assert page.scores.tolist() == _Order(20).scores[[0, 2, 3, 5]].tolist()
    # every pick finds the next row broken: MAX_ROUNDS reads, then the checked survivors
    store = _Broken({f"i{r}" for r in range(3, 20)})
    page = await pick_page(_Order(20), 5, rules, recheck=store)
    assert len(store.reads) == MAX_ROUNDS
    assert page.rows.tolist() == [0, 1, 2] and page.dropped["available"] >= MAX_ROUNDS


async def test_an_explored_page_is_drawn_from_a_checked_pool() -> None:
    """The first pick of an explored page reads its pool with it: an item of the pool the
    store paused is out of the pool the page is drawn from and logged with, also when the
    draw missed it (before: read only when a drop made the pick read ahead)."""

    order, k = _Order(40), 5
    rules = HardRules(viewer_id="m")
    paused = {f"i{2 * k - 1}"}  # the pool's last row: most draws miss it
    for seed in range(20):
        recheck = _Broken(paused)
        explorer = Explorer(rate=1.0, rng=np.random.default_rng(seed))
        page = await pick_page(order, k, rules, explorer=explorer, recheck=recheck)
        assert page.exploration is not None
        pool = {order.batch.ids[r] for r in page.exploration.pool.tolist()}
        assert len(page.rows) == k and not pool & paused, (seed, pool & paused)
