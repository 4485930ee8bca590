"""The served page: the first ``k`` rows of the reranked order (or the explorer's draw from
it), every shown item re-checked against MongoDB, the source of truth.

The engine filtered the candidates on its copy of the items' rule fields (availability,
deletion, owner, the two-sided preferences). That copy trails MongoDB by the sync lag, and
for as long as no sync worker runs (killed, wedged, failing): a member who paused their
profile, or changed whom they want to meet, stayed served on the engine's copy. So the page's
items are re-read (one ``_id $in`` of the page's ids: ~2 ms on FerretDB for 20, the same
read the degraded fallback makes) and checked with the request's
:class:`~opendisco.serving.HardRules`. An item that breaks a rule now is dropped and the page
is picked again from the rest of the order; an explored page is drawn again from the
shortened order, so the logged propensities are those of the page shown. A pick after a drop
reads, beside its page, the unchecked rows of the order's first :data:`LOOKAHEAD` pages (and
the explored pool): where the store changed one item of a page it changed others further
down, and re-reading only the replacements spent the rounds on them (short pages with
eligible candidates left). After :data:`MAX_ROUNDS` picks that each dropped something, the
page is taken from the checked items that passed, in order (explored: drawn from them, so the
log holds the page's propensities and pool, not a "deterministic" page the coin never chose):
a shorter page only when fewer passed, never an unchecked item. An explored page's first pick
reads its pool too (``2k`` rows): the pool is logged with the page's propensities, and one
that held items the store has paused was logged as what the page was drawn from, though they
were never eligible (whenever the draw itself missed them: no drop, no read ahead).

The read also returns each item's own ``exposure_cap`` as MongoDB holds it (no cap stored:
none of its own, the default cap, as ingest would index it). Then, after the re-read (the
pick's last await), the page's items are checked against their exposure caps as this process
knows them now (``caps``: ``serving._caps``), each item's cap the one the store returned (the
engine's copy trails one the app lowered — 100 → 3 went to every member for as long as no sync
ran — or raised: MongoDB is the source of truth; the hit's cap only for items the store was
not read for: ``serve_recheck`` off, an anonymous page served on the engine's copy) and, when
none reached its cap, counted toward exposure in the same step of the event loop: no other
request sees the page's impressions uncounted. An item that reached its cap while the request
awaited (another request took its last impression) is dropped like a re-check drop and the
page picked again; the page cut to the checked survivors is checked the same way.

A member's request whose re-read fails fails (it read the member from MongoDB already; the
API degrades it). An anonymous request (``similar``/``search`` without a member: the only
item rule is availability) keeps the engine's copy when MongoDB cannot be read, with a
warning, so those surfaces stay up through a store outage as before. Its read is bounded by
its own ``anonymous_timeout_s`` (``serve_recheck_anonymous_timeout_ms``): a store that does
not answer (paused, a connection stranded, server selection waiting on a store that refuses)
raises no error before the request deadline, and the API's fallback, which reads the store
too, has no safe answer then (503).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from opendisco._backend import backend_errors
from opendisco._exceptions import BackendError
from opendisco._settings import Settings

from ._explore import Exploration, Explorer
from ._filters import HIT_FIELDS, HardRules, Rule, stored_rule_fields

if TYPE_CHECKING:
    from opendisco.rerank import RerankResult

__all__ = [
    "LOOKAHEAD",
    "MAX_ROUNDS",
    "Page",
    "PageCheck",
    "Recheck",
    "Reread",
    "StoreRecheck",
    "pick_page",
    "read_rule_fields",
]

log = logging.getLogger("opendisco.serving")

#: the fields :func:`read_rule_fields` reads: the rule fields and the item's own cap
PROJECTION = dict.fromkeys(HIT_FIELDS, 1)
#: page picks before the page is cut to what was checked
MAX_ROUNDS = 3
#: after a pick dropped something, each read covers this many pages of the order's top
LOOKAHEAD = 2


async def read_rule_fields(coll: Any, ids: list[str], what: str) -> dict[str, dict[str, Any]]:
    """The rule fields and ``exposure_cap`` of ``ids`` as the items collection ``coll`` holds
    them now (:func:`stored_rule_fields`; an id absent from the result: no such item). One
    ``_id $in``: the served page's re-check and the degraded fallback's."""
    with backend_errors(f"{what} failed"):
        docs = await coll.find({"_id": {"$in": ids}}, projection=PROJECTION).to_list(None)
    return {str(d["_id"]): stored_rule_fields(d) for d in docs}


@dataclass(frozen=True)
class Reread:
    """What a re-check read: the rules ids break now, by id (an id missing from the store
    breaks ``available``; the ids that pass are absent), and the ``exposure_cap`` the store
    holds for each id it holds (None: none of its own, the default cap; an id whose stored cap
    ingest would refuse is absent: the hit's, the last version indexed, applies)."""

    broken: dict[str, Rule]
    caps: dict[str, Any]


class Recheck(Protocol):
    """The page's items re-read: :class:`Reread`."""

    async def __call__(self, rules: HardRules, ids: list[str]) -> Reread: ...


@dataclass(frozen=True)
class StoreRecheck:
    """:class:`Recheck` against the items collection."""

    db: Any
    collection: str
    #: the longest an anonymous request waits for the read (None: the request deadline)
    anonymous_timeout_s: float | None = None

    @classmethod
    def from_settings(cls, db: Any, settings: Settings) -> StoreRecheck | None:
        """The re-check ``settings`` ask for (None: ``serve_recheck`` off)."""
        if not settings.serve_recheck:
            return None
        timeout_s = settings.serve_recheck_anonymous_timeout_ms / 1000
        return cls(db, settings.items_collection, timeout_s)

    async def __call__(self, rules: HardRules, ids: list[str]) -> Reread:
        timeout = None if rules.member else self.anonymous_timeout_s
        read = read_rule_fields(self.db[self.collection], ids, "re-reading the page's items")
        try:
            now = await asyncio.wait_for(read, timeout)
        except TimeoutError as exc:
            raise BackendError(f"re-reading the page's items took over {timeout} s") from exc
        broken: dict[str, Rule] = {}
        for i in ids:
            rule = rules.broken(i, now[i]) if i in now else Rule.AVAILABLE
            if rule is not None:
                broken[i] = rule
        caps = {i: doc["exposure_cap"] for i, doc in now.items() if "exposure_cap" in doc}
        return Reread(broken, caps)


class PageCheck(Protocol):
    """The exposure caps of one page (``serving._caps.PageCaps``): the ids that reached
    their cap now (an id of ``stored``: on the cap the re-check read, else the hit's), and
    the page counted toward exposure (whether it was)."""

    def reached(self, ids: Sequence[str], stored: Mapping[str, Any]) -> set[str]: ...

    def take(self, ids: Sequence[str]) -> bool: ...


@dataclass(frozen=True)
class Page:
    rows: np.ndarray  # batch rows shown, in order
    scores: np.ndarray  # their scores
    exploration: Exploration | None
    dropped: Counter[str]  # rule → items the re-check (and the caps' check) dropped
    counted: bool = False  # counted toward exposure when picked (``PageCheck.take``)


async def pick_page(
    result: RerankResult,
    k: int,
    rules: HardRules,
    explorer: Explorer | None = None,
    recheck: Recheck | None = None,
    caps: PageCheck | None = None,
) -> Page:
    """The page of ``k`` rows from the reranked order: its top, or an explored draw when
    ``explorer`` is given and its coin says so (tossed once per request), every row
    re-checked by ``recheck`` and, after that, against ``caps`` (see the module docstring)."""
    order, ids = result.order, result.batch.ids
    drawer = explorer if explorer is not None and explorer.explores() else None
    keep = np.ones(order.shape[0], dtype=bool)
    passed: set[int] = set()
    stored: dict[str, Any] = {}  # id → its exposure_cap as the re-check read it
    dropped: Counter[str] = Counter()
    for _ in range(MAX_ROUNDS):
        live = order[keep]
        rows, exploration = _pick(live, k, drawer)
        shown = rows.tolist()
        if exploration is not None:  # the pool is logged with the page: checked with it
            shown = [*dict.fromkeys([*shown, *exploration.pool.tolist()])]
        todo = [r for r in shown if r not in passed]
        broken: dict[int, Rule] = {}
        if recheck is not None and todo:
            if dropped:  # the store changed under the engine's copy: read ahead
                ahead = _ahead(live, k, exploration).tolist()
                todo = [r for r in dict.fromkeys([*todo, *ahead]) if r not in passed]
            try:
                got = await recheck(rules, [ids[r] for r in todo])
            except BackendError as exc:
                if rules.member:
                    raise
                log.warning("anonymous page served on the engine's copy: %s", exc)
                recheck, got = None, Reread({}, {})
            stored.update(got.caps)
            passed.update(r for r in todo if ids[r] not in got.broken)
            broken = {r: got.broken[ids[r]] for r in todo if ids[r] in got.broken}
            if broken:
                log.info("re-check dropped %s (the engine's copy trails the store)", got.broken)
        if not broken and not (broken := _capped(caps, ids, rows, stored)):
            return _page(result, rows, exploration, dropped, caps, ids)  # no await since
        dropped.update(rule.value for rule in broken.values())
        keep &= ~np.isin(order, list(broken))
    # every pick dropped something: the page from the checked survivors, in order
    survivors = [r for r in order[keep].tolist() if recheck is None or r in passed]
    while True:  # no await: the caps as they are now
        rows, exploration = _pick(np.array(survivors, dtype=order.dtype), k, drawer)
        if not (broken := _capped(caps, ids, rows, stored)):
            return _page(result, rows, exploration, dropped, caps, ids)
        dropped.update(rule.value for rule in broken.values())
        survivors = [r for r in survivors if r not in broken]


def _capped(
    caps: PageCheck | None, ids: Sequence[str], rows: np.ndarray, stored: Mapping[str, Any]
) -> dict[int, Rule]:
    """The rows of the page whose items reached their exposure cap (``caps``; the cap
    ``stored`` holds for the items re-read) now."""
    if caps is None or not rows.size:
        return {}
    at_cap = caps.reached([ids[r] for r in rows.tolist()], stored)
    return {r: Rule.EXPOSURE_CAP for r in rows.tolist() if ids[r] in at_cap}


def _page(
    result: RerankResult,
    rows: np.ndarray,
    exploration: Exploration | None,
    dropped: Counter[str],
    caps: PageCheck | None,
    ids: Sequence[str],
) -> Page:
    """The page picked, counted toward exposure by ``caps`` in the same step as its check."""
    counted = caps is not None and caps.take([ids[r] for r in rows.tolist()])
    at = {int(r): p for p, r in enumerate(result.order.tolist())}
    scores = result.scores[[at[int(r)] for r in rows.tolist()]]
    return Page(rows, scores, exploration, dropped, counted)


def _pick(
    order: np.ndarray, k: int, drawer: Explorer | None
) -> tuple[np.ndarray, Exploration | None]:
    """A page of ``order``: drawn by ``drawer`` (the request's coin said explore), else its
    top ``k`` (also when too few rows are left to draw from)."""
    exploration = drawer.sample(order, k) if drawer is not None else None
    return (exploration.shown if exploration is not None else order[:k]), exploration


def _ahead(live: np.ndarray, k: int, exploration: Exploration | None) -> np.ndarray:
    """The rows a pick after a drop reads beyond its page: the top :data:`LOOKAHEAD` pages of
    the order and the explored pool (the replacements the next picks would need)."""
    top = live[: LOOKAHEAD * k]
    return top if exploration is None else np.concatenate([top, exploration.pool])
