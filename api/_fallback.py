"""The degraded answer: never unsafe, possibly stale.

When the pipeline cannot answer (deadline, outage, open breaker), :meth:`Fallback.answer`
serves from the per-segment lists (``_segments``, refreshed in the background) filtered for
the member in process with the one definition of the hard rules
(:class:`~opendisco.serving.HardRules`):

1. the member's rules are read from MongoDB the way the pipeline reads them (``users``
   document, :class:`UserState`, blocks both ways) under ``api_fallback_store_timeout_ms``;
2. the lists the member's preferences select are merged (best first) and filtered with
   the rules on the listed fields, then the survivors' rule fields (availability, deletion,
   preferences, owner) and own ``exposure_cap`` are re-read from MongoDB ``items`` (``_id
   $in``, same deadline) and filtered again: what the lists knew at refresh time is never
   trusted alone (a cap the app lowered in MongoDB only — 100 → 3 — went to every member on
   the lists' copy);
3. exposure caps are checked against the cap list read at the last refresh, and against the
   listed items' impressions read with it plus those this process served since (each item's
   cap: the one step 2 read, at the final check), written to
   the counters after that read or not yet (``Discovery.served``: its served answers and the
   fallback's own count toward the caps; ``signals.KnownImpressions``, the one definition the
   served pipeline checks too) — again once the answer is picked, when it is counted at
   once (no await between: two answers in flight cannot both take an item's last
   impression); when
   the cap list is older than two refresh periods ``exposure_cap`` is named in
   ``degraded_rules`` (the one rule a degraded answer may check on stale data: other
   processes' answers are not seen).

Before the first refresh (the engine down since start-up) the lists come from MongoDB: the
most popular available items in the member's preferred genders and ages, cached briefly; the
caps are checked against the last cap list any process stored there (``_segments.CAPS``,
named in ``degraded_rules`` when older than two refresh periods; unchecked and named only when
none was ever stored or it cannot be read).

When MongoDB cannot be read either (or nothing safe is left) there is no safe answer:
:class:`~opendisco.Overloaded` → 503 + Retry-After. Never an unfiltered list. A member whose
own preferences admit no profile (no ``users`` document: deleted, never written) gets an
empty answer where the lists hold only profiles, as the served path gives them
(``HardRules.admits_none_of``).

**Filling a short page** (:meth:`Fallback.fill`, the served pipeline's ``Discovery.fill``). When
a candidate source failed and the others left fewer eligible candidates than the page (one
sub-search refused: 3 of 10), the same lists, merged for the member's rules as above, become
candidates of the pipeline's request (source ``fallback``): they pass its filters, ranking,
the page's re-check against MongoDB and its caps, and are logged with the page (``filled``
rows) and counted with it. They are offered only when the cap list is fresh (within two
refresh periods: the pipeline's answer names no ``degraded_rules``), each item left out when
this process knows it reached its cap, and only within the request's deadline
(:data:`DEADLINE`) less ``fill_reserve_s`` (the ranking and the re-check still to run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from opendisco._backend import backend_errors
from opendisco._cancel import raise_lost_cancel
from opendisco._exceptions import BackendError, DocumentInvalid, Overloaded
from opendisco.ingest import validate_item
from opendisco.queries import Candidate
from opendisco.serving import (
    CandidatePlan,
    Discovery,
    HardRules,
    Recommendation,
    Rule,
    read_rule_fields,
)
from opendisco.signals import KnownImpressions

from ._segments import SegmentLists, load_caps

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

__all__ = ["DEADLINE", "Fallback", "FallbackAnswer", "to_served"]

log = logging.getLogger("opendisco.api")

_VECTOR_FIELDS = frozenset({"embedding", "behaviour", "_id"})
#: how many more candidates than asked are re-checked per MongoDB round trip
_OVERFETCH = 2
_ROUNDS = 3
#: the request's deadline on the event loop's clock (``Runtime.guarded``; None: no deadline)
DEADLINE: ContextVar[float | None] = ContextVar("opendisco_deadline", default=None)


def _plain(value: Any) -> Any:
    """JSON-friendly copy (numpy scalars/arrays, tuples) of an item field."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_served(rec: Recommendation, with_trace: bool = False) -> dict[str, Any]:
    """A :class:`~opendisco.serving.Recommendation` as a response item dict (no vectors)."""
    trace = rec.trace if with_trace else None
    return {
        "id": str(rec.id),
        "score": float(rec.score or 0.0),
        "sources": {str(k): float(v) for k, v in rec.sources.items()},
        "item": {k: _plain(v) for k, v in rec.item.items() if k not in _VECTOR_FIELDS},
        "trace": _plain(trace) if trace is not None else None,
    }


def _servable(doc: dict[str, Any]) -> bool:
    """Whether ingest would index the stored item ``doc`` (:func:`opendisco.ingest.validate_item`;
    its vectors are not read here). A refused one (dead-lettered: a title that is a
    document) was served as it is stored, and one ``popularity: "lots"`` made every cold
    degraded answer a 503."""
    try:
        validate_item(doc)
    except DocumentInvalid:
        return False
    return True


@dataclass
class FallbackAnswer:
    items: list[dict[str, Any]]
    template_version: str
    source: str  # "segments" | "mongo"
    #: hard rules checked on stale data or not at all (see the module docstring)
    degraded_rules: list[str] = field(default_factory=list)
    #: counted toward exposure when picked (``Discovery.record_served``): not again
    counted: bool = False


@dataclass
class Fallback:
    discovery: Discovery
    db: AsyncDatabase[dict[str, Any]]
    lists: SegmentLists
    items_collection: str = "items"
    store_timeout_s: float = 0.5
    refresh_s: float = 30.0
    cold_timeout_s: float = 5.0
    mongo_cache_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    #: the part of the request deadline a page's fill leaves to the ranking and re-check
    fill_reserve_s: float = 0.4
    name: str = "fallback"
    _cold: OrderedDict[tuple[Any, ...], tuple[float, list[Recommendation]]] = field(
        default_factory=OrderedDict
    )
    #: the cap list stored in MongoDB, as last read: (read at, ids or None, fresh)
    _stored_caps: tuple[float, frozenset[str] | None, bool] | None = None

    @property
    def ready(self) -> bool:
        return self.lists.snapshot is not None

    async def run(self) -> None:
        """Refresh the lists forever (a background task): the first refresh at once, every
        later one spread over half the period (:meth:`SegmentLists.refresh`), one starting
        every ``refresh_s`` seconds (at least half a period apart)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.lists.refresh(spread_s=self.refresh_s / 2)
            raise_lost_cancel()
            took = loop.time() - started
            await asyncio.sleep(max(self.refresh_s - took, self.refresh_s / 2))

    async def _store(self, what: str, call: Any, timeout_s: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(call, timeout_s or self.store_timeout_s)
        except Exception as exc:
            # the cause to the log only: its text may name hosts, or stored ids (who blocked
            # the member: member_blocks' blocked_by)
            log.warning("degraded answer: %s unreadable: %r", what, exc)
            raise Overloaded(f"no safe degraded answer: {what} unreadable", 2.0) from exc

    async def _popular(self, rules: HardRules, k: int) -> list[Recommendation]:
        """Cold start of the process: the most popular available items of the genders and
        ages the member accepts, from MongoDB (cached ``mongo_cache_s`` per preference)."""
        key = (tuple(sorted(rules.pref_genders)), rules.pref_age_min, rules.pref_age_max)
        hit = self._cold.get(key)
        now = self.clock()
        if hit is not None and now - hit[0] < self.mongo_cache_s:
            return hit[1]
        query: dict[str, Any] = {"deleted": {"$ne": True}, "available": True}
        profile: dict[str, Any] = {}
        if rules.member and rules.pref_genders:
            profile["gender"] = {"$in": sorted(rules.pref_genders)}
        ages = {
            op: v
            for op, v in (("$gte", rules.pref_age_min), ("$lte", rules.pref_age_max))
            if rules.member and v is not None
        }
        if ages:
            profile["age"] = ages
        if profile:
            query["$or"] = [{"kind": {"$ne": "profile"}}, profile]
        cursor = (
            self.db[self.items_collection]
            .find(query, {"embedding": 0, "behaviour": 0})
            .sort("popularity", -1)
            .limit(k)
        )
        with backend_errors("fallback: popular items lookup failed"):
            docs = [d for d in await cursor.to_list(k) if _servable(d)]
        recs = [
            Recommendation(
                id=str(d["_id"]),
                score=float(d.get("popularity") or 0.0),
                sources={},
                item={**d, "id": str(d["_id"])},
            )
            for d in docs
        ]
        self._cold[key] = (now, recs)
        while len(self._cold) > 256:
            self._cold.popitem(last=False)
        return recs

    def _pool(self, rules: HardRules) -> tuple[list[Recommendation], str] | None:
        snap = self.lists.snapshot
        if snap is None:
            return None
        merged: dict[str, Recommendation] = {}
        for seg, recs in snap.lists.items():
            if seg.relevant(rules):
                for r in recs:
                    if r.id not in merged or merged[r.id].score < r.score:
                        merged[r.id] = r
        return sorted(merged.values(), key=lambda r: (-r.score, r.id)), snap.version

    def _caps(self) -> tuple[frozenset[str] | None, bool]:
        """The cap list to check against and whether it is fresh enough to count as checked."""
        snap = self.lists.snapshot
        if snap is None or snap.capped is None or snap.capped_at is None:
            return None, False
        return snap.capped, self.clock() - snap.capped_at <= 2 * self.refresh_s

    async def _cap_list(self) -> tuple[frozenset[str] | None, bool]:
        """:meth:`_caps`, or before this process read any cap list, the last one stored in
        MongoDB by any process (read at most every ``mongo_cache_s``)."""
        capped, fresh = self._caps()
        if capped is not None:
            return capped, fresh
        now = self.clock()
        if self._stored_caps is not None and now - self._stored_caps[0] < self.mongo_cache_s:
            return self._stored_caps[1], self._stored_caps[2]
        alias = self.discovery.settings.index_alias
        try:
            got = await asyncio.wait_for(load_caps(self.db, alias), self.store_timeout_s)
        except Exception as exc:  # unchecked, and named in degraded_rules
            raise_lost_cancel()
            log.warning("fallback: stored cap list not read: %r", exc)
            return None, False
        ids, fresh = (None, False) if got is None else (got[0], got[1] <= 2 * self.refresh_s)
        self._stored_caps = (now, ids, fresh)
        return ids, fresh

    def _served_to_cap(self, pool: Iterable[Recommendation]) -> frozenset[str]:
        """Items of ``pool`` whose impressions at the last refresh plus those this process has
        served since (``Discovery.served``: written to the counters after that read, or not
        yet — the engine down) reach their cap: the fallback's own answers, and the served
        answers since the refresh, cap a member while the counters cannot be read. (Counting
        only those not yet written, the answers served with the engine up between the refresh
        and the outage were counted nowhere: a member this process had shown up to its cap
        was shown again, ``exposure_cap`` not named.) With no counts read (the engine down
        since start-up), this process's own impressions not yet read alone, as on the served
        path without a copy (returning none, every degraded answer showed the item)."""
        snap = self.lists.snapshot
        read = snap.counts if snap is not None else None
        counts = read if read is not None else {}
        window = snap.served_window if snap is not None and read is not None else 0
        known = KnownImpressions(
            lambda i: counts.get(i, 0),
            self.discovery.served,
            window,
            self.discovery.settings.exposure_default_cap,
            frozenset(self.discovery.exposure.known_capped()),
        )
        return frozenset(known.reached((r.id, r.item.get("exposure_cap")) for r in pool))

    async def fill(self, plan: CandidatePlan, n: int, have: AbstractSet[str]) -> list[Candidate]:
        """Up to ``n`` candidates (none of ``have``) from the lists for the pipeline's request
        ``plan``: those its rules allow on the listed fields, not on the cap list nor known
        to have reached their cap here, best first; none when the cap list is not fresh or
        the time left is not (see the module docstring)."""
        budget, deadline = self.store_timeout_s, DEADLINE.get()
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time() - self.fill_reserve_s
            budget = min(budget, left)
        if budget <= 0:
            return []
        try:
            async with asyncio.timeout(budget):
                capped, fresh = await self._cap_list()
                if capped is None or not fresh:  # caps unconfirmed: the page stays short
                    return []
                pooled = self._pool(plan.rules)
                pool = (
                    pooled[0]
                    if pooled is not None
                    else await self._popular(plan.rules, max(200, 5 * n))
                )
        except (TimeoutError, BackendError) as exc:
            raise_lost_cancel()
            log.warning("short page not filled: %r", exc)
            return []
        near = self._served_to_cap(pool)
        rules = plan.rules.with_capped(capped | near | (plan.rules.capped_ids or frozenset()))
        out: list[Candidate] = []
        for r in pool:
            if len(out) >= n:
                break
            if r.id not in have and rules.allows(r.id, r.item):
                rank = len(out) + 1
                out.append(
                    Candidate(r.id, {self.name: r.score}, {self.name: rank}, 0.0, dict(r.item))
                )
        return out

    async def answer(
        self,
        surface: str,
        user_id: str | None,
        k: int,
        exclude: Iterable[str] = (),
        request_id: str | None = None,
    ) -> FallbackAnswer:
        """Up to ``k`` items that obey every hard rule for this viewer; :class:`Overloaded`
        (503) when the rules cannot be read or nothing safe is left."""
        rules = await self._store("member state", self.discovery.rules_for(user_id, tuple(exclude)))
        capped, caps_fresh = await self._cap_list()
        pooled = self._pool(rules)
        if pooled is not None:
            pool, version, source = *pooled, "segments"
        else:
            pool = await self._store(
                "popular items", self._popular(rules, max(200, 5 * k)), self.cold_timeout_s
            )
            version, source = "fallback-popular", "mongo"
        near = self._served_to_cap(pool)
        rules = rules.with_capped(None if capped is None and not near else (capped or set()) | near)
        picked: list[Recommendation] = []
        queue = [r for r in pool if rules.allows(r.id, r.item)]
        for _ in range(_ROUNDS):
            if not queue or len(picked) >= k:
                break
            batch, queue = queue[: _OVERFETCH * k], queue[_OVERFETCH * k :]
            ids = [r.id for r in batch]
            read = read_rule_fields(self.db[self.items_collection], ids, "fallback: item re-check")
            fresh = await self._store("items", read)
            for r in batch:
                now = fresh.get(r.id)
                if now is not None and rules.allows(r.id, now):
                    picked.append(replace(r, item={**r.item, **now}))
        # after the last await: the caps as they are now, and the answer counted at once (two
        # degraded answers in flight must not both take an item's last impression)
        near = self._served_to_cap(picked)
        picked = [r for r in picked if r.id not in near]
        unchecked = [] if capped is not None and caps_fresh else [Rule.EXPOSURE_CAP.value]
        if not picked and rules.admits_none_of(r.item for r in pool):  # nor the served one
            return FallbackAnswer([], version, source, unchecked, counted=True)
        if not picked:
            raise Overloaded("no safe degraded answer for this member", 2.0)
        items = [to_served(r) for r in picked[:k]]
        self.discovery.record_served(items, request_id)  # a retry's same list: once
        return FallbackAnswer(items, version, source, unchecked, counted=True)
