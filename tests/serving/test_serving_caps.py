"""The page's exposure caps (``serving._page.pick_page`` with ``caps``), pure: an in-memory
page check and re-check (the API's real-server tests: ``tests/api/test_api_caps``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from test_serving_recheck import _Broken, _Order

from opendisco.serving import HardRules
from opendisco.serving._caps import ExposureCaps, PageCaps
from opendisco.serving._page import MAX_ROUNDS, Reread, pick_page
from opendisco.signals import KnownImpressions


class _Caps:
    """An in-memory page check: ``cap`` impressions of the ids in ``capped`` (every id when
    None), ``known`` so far; :meth:`take` counts the page (``counting``) as the API's
    pipeline does."""

    def __init__(
        self,
        cap: int,
        known: Counter[str] | None = None,
        counting: bool = True,
        capped: set[str] | None = None,
    ) -> None:
        self.cap, self.known, self.counting = cap, known or Counter(), counting
        self.capped = capped
        self.taken: list[list[str]] = []

    def reached(self, ids: Sequence[str], stored: Mapping[str, Any]) -> set[str]:
        mine = [i for i in ids if self.capped is None or i in self.capped]
        return {i for i in mine if self.known[i] >= self.cap}

    def take(self, ids: Sequence[str]) -> bool:
        self.taken.append(list(ids))
        if self.counting:
            self.known.update(ids)
        return self.counting


class _Slow(_Broken):
    """A re-check that yields to the event loop before it answers (a store read)."""

    async def __call__(self, rules: HardRules, ids: list[str]) -> Reread:
        await asyncio.sleep(0)
        return await super().__call__(rules, ids)


async def test_an_item_at_its_cap_leaves_the_page_which_is_picked_again() -> None:
    rules = HardRules.anonymous()
    caps = _Caps(cap=3, known=Counter({"i1": 3, "i2": 2}))
    page = await pick_page(_Order(20), 4, rules, recheck=_Broken(set()), caps=caps)
    assert page.rows.tolist() == [0, 2, 3, 4] and page.dropped == {"exposure_cap": 1}
    assert page.counted and caps.taken == [["i0", "i2", "i3", "i4"]]  # counted once
    assert caps.known["i2"] == 3  # its last impression: taken by this page
    # without a re-check (serve_recheck off) the caps still hold
    again = await pick_page(_Order(20), 4, rules, caps=caps)
    assert again.rows.tolist() == [0, 3, 4, 5] and again.dropped == {"exposure_cap": 2}
    # a caller that does not count (CLI, evaluation): checked, not counted
    quiet = _Caps(cap=1, known=Counter({"i0": 1}), counting=False)
    page = await pick_page(_Order(20), 2, rules, caps=quiet)
    assert page.rows.tolist() == [1, 2] and not page.counted and not quiet.known["i1"]


async def test_requests_in_flight_cannot_both_take_the_last_impression() -> None:
    """Ten picks whose re-checks answer in one turn of the loop: the first to resume takes
    i0's last impression, the others see it taken. Counted later (when the API answers), all
    ten took it."""
    rules = HardRules.anonymous()
    for counting, most in ((True, 1), (False, 10)):
        caps = _Caps(cap=3, known=Counter({"i0": 2}), counting=counting, capped={"i0"})
        pages = await asyncio.gather(
            *(pick_page(_Order(20), 3, rules, recheck=_Slow(set()), caps=caps) for _ in range(10))
        )
        assert sum(0 in p.rows.tolist() for p in pages) == most, counting
        assert all(len(p.rows) == 3 for p in pages)


async def test_the_survivors_page_is_checked_against_the_caps_too() -> None:
    """After MAX_ROUNDS picks that each dropped something, the page of checked survivors
    still leaves out what reached its cap (no await between that check and the count)."""
    rules = HardRules.anonymous()
    caps = _Caps(cap=1)
    store = _Broken({f"i{r}" for r in range(3, 20)})

    class Late(_Broken):  # another request takes i1 while this one's last read runs
        async def __call__(self, rules: HardRules, ids: list[str]) -> Reread:
            if len(store.reads) == MAX_ROUNDS - 1:
                caps.known["i1"] += 1
            return await store(rules, ids)

    page = await pick_page(_Order(20), 5, rules, recheck=Late(set()), caps=caps)
    assert len(store.reads) == MAX_ROUNDS
    assert page.rows.tolist() == [0, 2] and page.dropped["exposure_cap"] == 1
    assert caps.taken == [["i0", "i2"]]


class _Served:
    def served_since(self, item_id: str, generation: int) -> int:
        return 0


class _Mirror:
    """A copy of the counters holding ``counts`` (``ExposureMirror.known``)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def known(self) -> KnownImpressions:
        return KnownImpressions(lambda i: self.counts.get(i, 0), _Served(), 0, default_cap=200)


async def test_the_page_is_checked_on_the_caps_the_store_holds() -> None:
    """The engine's copy of the caps trails MongoDB: the page is checked on the caps its
    re-check read (the real :class:`PageCaps`) — lowered (i0: 100 → 3) it is out, raised
    (i1: 3 → 100) or removed (i2: the default, 200) it is in. Without a re-read, the hits'."""
    engine = {"i0": 100, "i1": 3, "i2": 3}
    items = {f"i{r}": {"exposure_cap": engine.get(f"i{r}")} for r in range(20)}
    caps = PageCaps(ExposureCaps(_Mirror(dict.fromkeys(engine, 3))), items)  # type: ignore[arg-type]

    class Store(_Broken):
        async def __call__(self, rules: HardRules, ids: list[str]) -> Reread:
            stored = {"i0": 3, "i1": 100, "i2": None}
            return Reread({}, {i: stored.get(i) for i in ids})

    rules = HardRules.anonymous()
    page = await pick_page(_Order(20), 3, rules, recheck=Store(set()), caps=caps)
    assert page.rows.tolist() == [1, 2, 3] and page.dropped == {"exposure_cap": 1}
    page = await pick_page(_Order(20), 3, rules, caps=caps)
    assert page.rows.tolist() == [0, 3, 4] and page.dropped == {"exposure_cap": 2}
