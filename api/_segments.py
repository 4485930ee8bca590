"""The degraded fallback's material: per-segment lists, refreshed in the background.

A segment is a slice of the catalogue a member's preferences select from: profiles of one
gender in one age band, plus :data:`ALL` (the whole catalogue, trending). The genders and the
age range come from the index (one aggregation), the band width from the settings, so nothing
here knows the data. Each list is the trending surface restricted to its segment, run through
the served candidate stage (``Discovery.candidates``: the engine's eligibility fragment with the
segment as the viewer's preferences, then the hard-rules filter), so lists hold only available,
uncapped items at refresh time. A snapshot of the exposure cap list is kept beside them, and
in MongoDB (:data:`CAPS`, one document per items alias, written by every refresh that read
it): a process that starts while the engine is down checks caps against the last list any
process read (:func:`load_caps`). Per member the lists are merged and filtered in process
(``_fallback``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opendisco._backend import backend_errors
from opendisco._domain import Surface
from opendisco._store import age_s
from opendisco.serving import Discovery, HardRules, Recommendation

__all__ = ["ALL", "CAPS", "Segment", "SegmentLists", "Snapshot", "age_bands", "load_caps"]

log = logging.getLogger("opendisco.api")

#: the last exposure cap list a refresh read: ``{_id: items alias, ids: [...], at}``
CAPS = "fallback_caps"


async def save_caps(db: Any, alias: str, capped: frozenset[str]) -> None:
    """Keep ``capped`` (the cap list just read from the engine) in MongoDB for ``alias``."""
    doc = {"_id": alias, "ids": sorted(capped), "at": datetime.now(UTC)}
    with backend_errors("fallback: storing the cap list failed"):
        await db[CAPS].replace_one({"_id": alias}, doc, upsert=True)


async def load_caps(db: Any, alias: str) -> tuple[frozenset[str], float] | None:
    """The last cap list stored for ``alias`` and its age in seconds (None: never stored;
    infinite: undated, or dated ahead of this clock — ``opendisco._store.age_s``)."""
    with backend_errors("fallback: reading the stored cap list failed"):
        doc = await db[CAPS].find_one({"_id": alias})
    if doc is None:
        return None
    age = age_s(doc.get("at"), datetime.now(UTC))
    return frozenset(str(i) for i in doc.get("ids") or ()), age


@dataclass(frozen=True, order=True)
class Segment:
    """Profiles of ``gender`` aged within ``ages`` (inclusive); both None: everything."""

    gender: str | None = None
    ages: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        if self.gender is None:
            return "all"
        return f"{self.gender}:{self.ages[0]}-{self.ages[1]}" if self.ages else self.gender

    def params(self) -> dict[str, Any]:
        """Template parameters restricting candidates to the segment (the eligibility
        fragment's viewer-side clauses; items that are not profiles pass them)."""
        if self.gender is None:
            return {}
        out: dict[str, Any] = {"viewer_pref_genders": [self.gender]}
        if self.ages is not None:
            out["viewer_pref_age_min"], out["viewer_pref_age_max"] = self.ages
        return out

    def relevant(self, rules: HardRules) -> bool:
        """Could this segment hold someone the viewer may see? (The exact check is the
        rules' own, per item; this only picks the lists worth merging.)"""
        if self.gender is None or not rules.member:
            return True
        if rules.pref_genders and self.gender not in rules.pref_genders:
            return False
        if self.ages is None:
            return True
        lo, hi = self.ages
        return not (
            (rules.pref_age_max is not None and lo > rules.pref_age_max)
            or (rules.pref_age_min is not None and hi < rules.pref_age_min)
        )


ALL = Segment()


def age_bands(lo: int, hi: int, width: int) -> list[tuple[int, int]]:
    """``[lo, hi]`` cut into bands of ``width`` years (the last one may be shorter)."""
    return [(a, min(hi, a + width - 1)) for a in range(lo, hi + 1, width)]


@dataclass
class Snapshot:
    """The lists of one refresh, by segment, best first, and the latest cap list read
    (``capped_at``: when; both None before the first successful read)."""

    lists: dict[Segment, list[Recommendation]]
    version: str
    capped: frozenset[str] | None
    capped_at: float | None
    #: the listed items' impressions in their window, read with the cap list (None: unread)
    counts: dict[str, int] | None = None
    #: the window of this process's served impressions opened just before ``counts`` were
    #: read (``ServedExposure.served_since``: what they cannot hold)
    served_window: int = 0


@dataclass
class SegmentLists:
    """Keeps :class:`Snapshot` fresh from the engine (see the module docstring)."""

    discovery: Discovery
    k: int = 200
    band: int = 10
    timeout_s: float = 5.0
    parallel: int = 4
    clock: Callable[[], float] = time.monotonic
    snapshot: Snapshot | None = None
    refreshed_ok: int = 0
    refresh_failures: int = 0
    #: the length of the engine's cap list as last read (None before the first read): the
    #: candidate queries fail past ``index.max_terms_count`` (``opendisco_api_exposure_capped``)
    capped_read: int | None = None
    _segments: list[Segment] = field(default_factory=list)

    async def segments(self) -> list[Segment]:
        """Gender x age band of the indexed profiles (one aggregation), plus :data:`ALL`."""
        disc = self.discovery
        body = {
            "size": 0,
            "query": {"bool": {"filter": [{"term": {"kind": "profile"}}]}},
            "aggs": {
                "gender": {"terms": {"field": "gender", "size": 64}},
                "age_min": {"min": {"field": "age"}},
                "age_max": {"max": {"field": "age"}},
            },
        }
        with backend_errors("fallback segments: aggregation failed"):
            resp = await disc.os.search(index=disc.settings.index_alias, body=body)
        aggs = resp.get("aggregations") or {}
        genders = [str(b["key"]) for b in aggs.get("gender", {}).get("buckets", [])]
        lo, hi = aggs.get("age_min", {}).get("value"), aggs.get("age_max", {}).get("value")
        bands: Sequence[tuple[int, int] | None] = (
            age_bands(int(lo), int(hi), self.band) if lo is not None and hi is not None else [None]
        )
        return [ALL, *(Segment(g, b) for g in genders for b in bands)]

    async def _list(self, segment: Segment) -> tuple[list[Recommendation], str]:
        plan = await self.discovery.plan(Surface.trending, min(self.k, 500))
        plan.request.k = self.k
        plan.request.params.update(segment.params())
        cs = await self.discovery.candidates(plan)
        recs = [
            Recommendation(id=c.id, score=c.fused, sources=dict(c.sources), item=dict(c.item))
            for c in cs.candidates
        ]
        return recs, cs.template_version

    async def _store_caps(self, capped: frozenset[str]) -> None:
        disc = self.discovery
        try:
            await asyncio.wait_for(
                save_caps(disc.db, disc.settings.index_alias, capped), self.timeout_s
            )
        except Exception as exc:  # best effort: this process has the list in memory
            log.warning("fallback: cap list not stored: %r", exc)

    async def _counts(self, lists: dict[Segment, list[Recommendation]]) -> dict[str, int] | None:
        """The listed items' impressions in their window (doc values: a search per 2,000
        ids), read beside the cap list; None when they cannot be read."""
        try:
            ids = sorted({r.id for recs in lists.values() for r in recs})
            got = await asyncio.wait_for(
                self.discovery.exposure.read(ids, realtime=False), self.timeout_s
            )
        except Exception as exc:
            log.warning("fallback: exposure counts not read: %r", exc)
            return None
        return {i: e.count for i, e in got.items() if e.count}

    async def refresh(self, spread_s: float = 0.0) -> bool:
        """One refresh; on failure the previous snapshot is kept (a failed segment keeps its
        previous list).

        With ``spread_s`` > 0 and a snapshot to serve meanwhile, the lists are fetched one at
        a time, evenly over ``spread_s`` seconds: a refresh is a dozen or more
        ``k``-sized candidate queries, and fetched together they queue the requests being
        served behind them on the engine and this event loop (a latency spike every refresh,
        the p99 of a lightly loaded server). The first refresh fetches ``parallel`` at once:
        nothing is served from the lists until it is done."""
        try:
            self._segments = await asyncio.wait_for(self.segments(), self.timeout_s)
        except Exception as exc:  # keep the previous segments
            log.warning("fallback segments not refreshed: %r", exc)
            if not self._segments:
                self._segments = [ALL]
        paced = spread_s > 0 and self.snapshot is not None
        gate = asyncio.Semaphore(1 if paced else self.parallel)
        pause = spread_s / len(self._segments) if paced else 0.0

        async def one(seg: Segment) -> tuple[list[Recommendation], str]:
            async with gate:
                try:
                    got = await asyncio.wait_for(self._list(seg), self.timeout_s)
                except Exception:
                    await asyncio.sleep(pause)
                    raise
                await asyncio.sleep(pause)
                return got

        results = await asyncio.gather(*(one(s) for s in self._segments), return_exceptions=True)
        old = self.snapshot
        try:
            capped = frozenset(
                await asyncio.wait_for(self.discovery.exposure.capped(), self.timeout_s)
            )
            capped_at: float | None = self.clock()
            self.capped_read = len(capped)
            await self._store_caps(capped)
            read = True
        except Exception as exc:  # keep the older cap list, and its age
            log.warning("fallback: exposure cap list not read: %r", exc)
            capped, capped_at = (old.capped, old.capped_at) if old is not None else (None, None)
            read = False
        lists: dict[Segment, list[Recommendation]] = {}
        version = old.version if old is not None else ""
        failed = 0
        for seg, res in zip(self._segments, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, Exception):
                    raise res
                failed += 1
                if old is not None and seg in old.lists:
                    lists[seg] = old.lists[seg]
                continue
            lists[seg], version = res[0], f"fallback:{res[1]}"
        if lists:
            counts, window = None, 0
            served = self.discovery.served
            if read:
                window = served.open_window("fallback")  # before the read: nothing missed
                counts = await self._counts(lists)
            if counts is None and old is not None and old.counts is not None:
                # not read (the cap list or the counts): the older counts, with everything
                # served since they were read (dropping them, the fallback checked the cap
                # list alone and showed a member past its cap all through a search storm)
                if read:
                    served.close_window(window)
                counts, window = old.counts, old.served_window
            self.snapshot = Snapshot(lists, version, capped, capped_at, counts, window)
        if failed:
            self.refresh_failures += 1
            log.warning("fallback refresh: %d of %d lists failed", failed, len(results))
            return False
        self.refreshed_ok += 1
        return True
