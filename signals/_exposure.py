"""Exposure counters and the in-engine cap list (``<alias>-exposures``).

Why a separate index, and its cap list (the trade-off): ``signals._counters_index``.

Windows are tumbling per item: the first impression after ``exposure_window_hours`` resets the
counter; capped ids carry their window's end in the list document and fall out of it on the
next :meth:`ExposureStore.record` or :meth:`ExposureStore.sweep` after that moment. A reading
(:meth:`ExposureStore.read`) also gives each item's *paced* exposure: its impressions decayed
exponentially with the window as time constant (a leaky bucket, kept in the same scripted
update) — what exposure pacing compares with a member's budget per window; it paces
continuously (no reset at a window's end) and budgets below one impression per window work.

**Live trending** (``signals._trending``): the same documents carry each item's decayed
like/match count, added by :meth:`ExposureStore.record_trend` and ranked in the engine by
:meth:`ExposureStore.trending` (the trending source and feature).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._backend import backend_errors, whole_docs, whole_search
from opendisco._exceptions import InvalidInput, NotFound, PartialWrite, SearchBackendError
from opendisco._settings import Settings

from ._caps import item_cap, window_count
from ._counters_index import CAPPED_DOC_ID, ensure_counters
from ._counting import CAPPED_SCRIPT, count_pairs
from ._engine_bulk import bulk_updates
from ._fence import fence
from ._trending import (
    decayed,
    epoch_ms,
    trend_increments,
    trend_update_actions,
    trending_query,
)

__all__ = [
    "CAPPED_DOC_ID", "READ_FIELDS", "Exposure", "ExposureStore", "capped_lookup", "exposure_index",
]  # fmt: skip

log = logging.getLogger("opendisco.signals")

CAPPED_PATH = "capped.ids"

#: ids per search of a non-realtime read (well under ``index.max_result_window``)
_SEARCH_IDS = 2000
READ_FIELDS = ["item_id", "count", "window_start", "paced", "paced_at", "trend", "trend_at"]


@dataclass(frozen=True)
class Exposure:
    """One item's counters as read at some time."""

    count: int = 0  # impressions in the current window
    paced: float = 0.0  # impressions decayed with the window as time constant (leaky bucket)
    trend: float = 0.0  # live decayed likes/matches


def exposure_index(settings: Settings) -> str:
    return f"{settings.index_alias}-exposures"


def capped_lookup(settings: Settings) -> dict[str, Any]:
    """The ``terms`` lookup clause that matches capped items (put it under ``must_not``)."""
    return {
        "terms": {
            "id": {"index": exposure_index(settings), "id": CAPPED_DOC_ID, "path": CAPPED_PATH}
        }
    }


class ExposureStore:
    """Impression counters per item and the ``capped`` list the candidate queries exclude."""

    def __init__(self, client: AsyncOpenSearch, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.index = exposure_index(settings)
        self.window_ms = int(settings.exposure_window_hours * 3_600_000)
        self.half_life_ms = settings.trending_half_life_hours * 3_600_000
        self.trend_window_ms = settings.trending_window_hours * 3_600_000
        #: newly capped ids (-> window end) whose cap-list update failed: sent with the next
        self._due: dict[str, int] = {}
        #: :meth:`ensure` succeeded in this process (a write before it ensures the index)
        self._ready = False
        self._ensuring: asyncio.Future[None] | None = None  # the attempt callers share

    async def ensure(self) -> None:
        """Create the counters index (idempotent: ``_counters_index.ensure_counters``)."""
        await ensure_counters(self.client, self.index, self.settings.shards, self.settings.replicas)
        self._ready = True

    @property
    def ready(self) -> bool:
        """The counters index is ensured in this process (until then a batch of events with
        engine writes fails at once: ``EffectWriter``)."""
        return self._ready

    async def ensure_once(self) -> None:
        """:meth:`ensure` until it succeeded in this process, then a flag check: before each
        write (a served-list flush may come before any request: an upsert into a missing
        index creates it with dynamic mappings where indices auto-create) and each plan.
        Callers arriving while one attempts it wait for that attempt and share its failure
        (behind a lock each tried again in turn: in an outage the tenth waited ten timeouts).
        The attempt runs in its caller's task, never one left running when its callers are
        gone: cancelled, its waiters fail as on a backend error."""
        if self._ready:
            return
        running = asyncio.get_running_loop()
        shared = self._ensuring
        if shared is not None and not shared.done() and shared.get_loop() is running:
            await asyncio.shield(shared)  # the attempt's outcome, not the waiter's cancel
            return
        shared = self._ensuring = running.create_future()
        try:
            await self.ensure()
        except BaseException as exc:
            failed = exc if isinstance(exc, Exception) else None
            shared.set_exception(failed or SearchBackendError(f"{self.index}: ensure cancelled"))
            shared.exception()  # retrieved: nobody may be waiting
            raise
        shared.set_result(None)

    async def _caps(self, ids: list[str]) -> dict[str, int]:
        """Each item's own ``exposure_cap`` (doc values of those that have one), else the
        default: ~4 ms per 360-id flush vs 44 by a realtime ``mget`` (bench/README.md, api)."""
        caps = dict.fromkeys(ids, self.settings.exposure_default_cap)
        for chunk in _id_chunks(ids):
            own = [{"ids": {"values": chunk}}, {"exists": {"field": "exposure_cap"}}]
            body = {"size": len(chunk), "_source": False, "query": {"bool": {"filter": own}}}
            # the items' index unknown (a node behind on the cluster state, or none yet) is a
            # failed read: every item at the default cap let one with a lower own cap past it
            with backend_errors("exposure caps lookup failed"):
                resp = await self.client.search(
                    index=self.settings.index_alias,
                    body={**body, "docvalue_fields": ["exposure_cap"]},
                )
            # a failed shard's items read as having no cap: the default (200) over their own
            for hit in whole_search(resp, "exposure caps lookup")["hits"]["hits"]:
                own_cap = (hit.get("fields") or {}).get("exposure_cap", [None])[0]
                caps[hit["_id"]] = item_cap(own_cap, self.settings.exposure_default_cap)
        return caps

    async def record(
        self,
        counts: Mapping[str, int],
        now: datetime | None = None,
        *,
        cap_list: bool = True,
        mark: str | None = None,
    ) -> list[str]:
        """Add impressions per item id; returns the ids that are capped after this call.

        One search (caps), one ``_bulk`` of scripted upserts (counters; 429s sent again,
        ``_engine_bulk``), one scripted update of the capped list (with ``cap_list=False``
        none: the newly capped ids wait for the next update, as after a refused one; a caller
        writing a batch in parts updates it with the last). Item documents are never written.
        Counters still unwritten raise :class:`~opendisco.PartialWrite` naming them (every
        other one was: a caller must not add those again). A cap-list update failing after
        the counters were written does not fail the call (it would be counted again): the
        newly capped ids go with the next update (``record`` or ``sweep``), the ids returned
        are those this store knows capped. ``mark`` is kept on each counter written
        (:meth:`landed` tells whether a failed write landed)."""
        batch = {str(k): int(v) for k, v in counts.items() if int(v) != 0}
        if any(v < 0 for v in batch.values()):
            raise InvalidInput("impression counts must be >= 0")
        now_ms = epoch_ms(now or datetime.now(UTC))
        if not batch:
            return []
        await self.ensure_once()
        ids = sorted(batch)
        caps = await self._caps(ids)
        pairs = count_pairs(self.index, batch, caps, now_ms, self.window_ms, mark)
        applied, failed, unsure = await bulk_updates(
            self.client, pairs, "exposure bulk update failed"
        )
        add = self._at_cap((r["_id"], (r.get("get") or {}).get("_source") or {}) for r in applied)
        if not cap_list:
            self._defer(add)
            capped = self.known_capped(now_ms)
        else:
            try:
                capped = await self._update_capped(add, now_ms)
            except SearchBackendError as exc:  # the counts are written: never count them again
                log.warning("exposure cap list not updated yet (kept for the next update): %s", exc)
                capped = self.known_capped(now_ms)
        if failed:
            msg = f"exposure updates failed: {list(failed.items())[:3]}"
            raise PartialWrite(msg, frozenset(failed), unsure)
        return capped

    async def sweep(self, now: datetime | None = None) -> list[str]:
        """Drop capped ids whose window ended; returns the capped ids left."""
        await self.ensure_once()
        return await self._update_capped({}, epoch_ms(now or datetime.now(UTC)))

    async def _update_capped(self, add: Mapping[str, int], now_ms: int) -> list[str]:
        """Add ``add`` and the ids left by updates that failed (``_due``) to the list."""
        sent, self._due = {**self._due, **add}, {}
        try:
            resp = await self._send_capped(sent, now_ms)
        except SearchBackendError:
            self._defer(sent)
            raise
        src = (resp.get("get") or {}).get("_source") or {}
        return sorted((src.get("capped") or {}).get("ids") or [])

    def _at_cap(self, counters: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, int]:
        """Pure: of ``(id, counter as a write answered it)``, those at their cap -> the end of
        their window (ended windows fall out of the list with its update)."""
        add: dict[str, int] = {}
        for item_id, src in counters:
            if src.get("count", 0) >= src.get("cap", self.settings.exposure_default_cap):
                add[item_id] = int(src.get("window_start", 0)) + self.window_ms
        return add

    def _defer(self, add: Mapping[str, int]) -> None:
        """Keep newly capped ids (with their window end) for the next update of the list
        (``record`` or ``sweep``)."""
        for i, until in add.items():
            self._due[i] = max(self._due.get(i, 0), until)

    def known_capped(self, now_ms: int | None = None) -> list[str]:
        """The capped ids this store holds for the next list update (not on the engine's list
        yet), within their window: at their cap for this process (``KnownImpressions``)."""
        now_ms = epoch_ms(datetime.now(UTC)) if now_ms is None else now_ms
        return sorted(i for i, until in self._due.items() if until > now_ms)

    async def _send_capped(self, add: Mapping[str, int], now_ms: int) -> dict[str, Any]:
        with backend_errors("capped list update failed"):
            return await self.client.update(
                index=self.index,
                id=CAPPED_DOC_ID,
                body={
                    "script": {
                        "lang": "painless",
                        "source": CAPPED_SCRIPT,
                        "params": {"add": dict(add), "now": now_ms},
                    },
                    "upsert": {"capped": {"ids": [], "until": {}}},
                    "scripted_upsert": True,
                    "_source": [CAPPED_PATH],
                },
                params={"retry_on_conflict": 10},
            )

    async def capped(self) -> list[str]:
        """The ids the candidate queries currently exclude (none before the first list; the
        index unknown to a node behind on the cluster state is a backend error, not none)."""
        try:
            with backend_errors("capped list read failed", not_found="no cap list yet"):
                doc = await self.client.get(index=self.index, id=CAPPED_DOC_ID)
        except NotFound:
            return []
        return sorted(((doc.get("_source") or {}).get("capped") or {}).get("ids") or [])

    async def counts(self, ids: Iterable[str], now: datetime | None = None) -> dict[str, int]:
        """Impressions in the current window per id (0 for unknown ids or expired windows)."""
        return {i: e.count for i, e in (await self.read(ids, now)).items()}

    async def read(
        self, ids: Iterable[str], now: datetime | None = None, *, realtime: bool = True
    ) -> dict[str, Exposure]:
        """Every id's counters at ``now`` (impressions in the window, how far into it, live
        decayed like/match count): by ``mget`` (``realtime``, every write), else by one search
        of doc values as of the last refresh (≤ ``REFRESH`` behind: the reranker's features;
        caps are enforced by the realtime ``_capped`` list in the candidate query, not here)."""
        wanted = [str(i) for i in ids]
        out = dict.fromkeys(wanted, Exposure())
        if not wanted:
            return out
        now_ms = epoch_ms(now or datetime.now(UTC))
        # the counters' index unknown (ensured before use: a node behind on the cluster
        # state) is a failed read, not zero counts: the fallback checks caps by them
        with backend_errors("exposure counts lookup failed"):
            docs = await (self._get(wanted) if realtime else self._search(wanted))
        for doc in docs:
            if doc.get("found"):
                out[doc["_id"]] = self.exposure_of(doc.get("_source") or {}, now_ms)
        return out

    def exposure_of(self, src: Mapping[str, Any], now_ms: int) -> Exposure:
        """Pure: one counter document's fields (``READ_FIELDS``) read at ``now_ms``."""
        count = window_count(src.get("count"), src.get("window_start"), now_ms, self.window_ms)
        trend = 0.0
        if src.get("trend") is not None and src.get("trend_at") is not None:
            trend = decayed(
                src["trend"], int(src["trend_at"]), now_ms, self.half_life_ms,
                self.trend_window_ms,
            )  # fmt: skip
        paced = 0.0
        if src.get("paced") is not None and src.get("paced_at") is not None:
            dt = max(now_ms - int(src["paced_at"]), 0)
            paced = float(src["paced"]) * math.exp(-dt / self.window_ms)
        return Exposure(count=count, paced=paced, trend=trend)

    async def _get(self, ids: list[str]) -> list[dict[str, Any]]:
        resp = await self.client.mget(
            index=self.index, body={"ids": ids}, params={"_source_includes": ",".join(READ_FIELDS)}
        )
        return list(whole_docs(resp.get("docs", []), "exposure counts lookup"))

    async def landed(self, ids: Iterable[str], mark: str) -> set[str]:
        """Of ``ids``, those whose counter write with ``mark`` landed; on the others it is
        fenced: it never counts, even if it arrives later (:func:`~._fence.fence`)."""
        return {i for i, _ in await self.fence((str(i), mark) for i in ids)}

    async def fence(self, marks: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """The ``(item id, mark)`` whose write landed, the others fenced (``_fence``). A landed
        write that brought its counter to its cap puts it on the cap list now (nobody writes
        those impressions again: their ``record`` never got that far), as ``record`` does."""
        landed = await fence(self.client, self.index, marks)
        if add := self._at_cap((i, src) for (i, _mark), src in landed.items()):
            now_ms = epoch_ms(datetime.now(UTC))
            try:
                await self._update_capped(add, now_ms)
            except SearchBackendError as exc:  # kept for the next update (``_due``)
                log.warning("exposure cap list not updated yet (kept for the next update): %s", exc)
        return set(landed)

    async def _search(self, ids: list[str]) -> list[dict[str, Any]]:
        """Counters from doc values, no stored field (not even ``_id``): 500 ids ~6.5 ms."""
        docs: list[dict[str, Any]] = []
        for chunk in _id_chunks(ids):
            query = {"size": len(chunk), "query": {"ids": {"values": chunk}}}
            resp = await self.client.search(
                index=self.index,
                body={**query, "stored_fields": "_none_", "docvalue_fields": READ_FIELDS},
            )
            for hit in whole_search(resp, "exposure counts lookup")["hits"]["hits"]:
                got = {k: v[0] for k, v in (hit.get("fields") or {}).items() if v}
                if (item := got.pop("item_id", None)) is not None:
                    docs.append({"_id": item, "found": True, "_source": got})
        return docs

    async def record_trend(
        self,
        likes: Iterable[tuple[str, datetime, float]],
        now: datetime | None = None,
        *,
        mark: str | None = None,
    ) -> int:
        """Add ``(item, when, weight)`` likes/matches to the items' live decayed counts (one
        ``_bulk`` of scripted upserts, each keeping ``mark``); returns the items updated."""
        incs = trend_increments(likes, self.half_life_ms)
        if not incs:
            return 0
        await self.ensure_once()
        now_ms = epoch_ms(now or datetime.now(UTC))
        body = trend_update_actions(self.index, incs, self.half_life_ms, now_ms, mark)
        pairs = list(zip(body[::2], body[1::2], strict=True))
        _applied, failed, unsure = await bulk_updates(self.client, pairs, "live trending failed")
        if failed:
            msg = f"live trending updates failed: {list(failed.items())[:3]}"
            raise PartialWrite(msg, frozenset(failed), unsure)
        return len(incs)

    async def trending(self, k: int, now: datetime | None = None) -> list[tuple[str, float]]:
        """The ``k`` items with the highest live decayed count at ``now``, best first (one
        search over the counters, scored in the engine)."""
        now_ms = epoch_ms(now or datetime.now(UTC))
        body = trending_query(k, now_ms, self.trend_window_ms, self.half_life_ms)
        # the counters' index unknown (ensured before use: a node behind on the cluster state)
        # is a failed read, not no trending items: the list read before is kept
        with backend_errors("live trending lookup failed"):
            resp = await self.client.search(index=self.index, body=body)
        return [(h["_id"], float(h["_score"])) for h in resp["hits"]["hits"] if h["_score"] > 0]


def _id_chunks(ids: list[str]) -> Iterator[list[str]]:  # one search per slice
    return (ids[k : k + _SEARCH_IDS] for k in range(0, len(ids), _SEARCH_IDS))
