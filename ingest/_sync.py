"""Incremental sync: change feed → validate/embed → external-versioned bulk → checkpoint.

The checkpoint of a batch is committed only after every change in it was acknowledged (2xx,
or 409 meaning a newer copy is already there) or recorded as a dead letter; a failure
before that leaves the checkpoint where it was, and the batch is replayed on restart —
replays are harmless because every write carries the document's external version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opendisco import clients
from opendisco._settings import Settings

from ._apply import Applied, Counters, prepare, write
from ._bulk import Action, BulkWriter
from ._embed import Embedder
from ._feed import ChangeBatch, ChangeFeed, HardDelete, open_feed

__all__ = ["SyncReport", "Syncer", "run_sync", "sync_once"]


@dataclass(kw_only=True)
class SyncReport(Counters):
    """The counters of one sync pass (``seen`` = changes read) and how it went."""

    mode: str
    batches: int = 0
    took_s: float = 0.0

    @property
    def changes(self) -> int:
        return self.seen


class Syncer:
    """Holds the clients, the feed and the embedder across cycles of ``run_sync``."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: Any | None = None,
        db: Any | None = None,
        embedder: Embedder | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        self.settings = settings
        self._own_client = client is None
        self.client = client or clients.async_opensearch(settings)
        self._motor = clients.motor(settings) if db is None else None
        self.db = db if db is not None else self._motor[settings.mongo_db]  # type: ignore[index]
        self.embedder = embedder or Embedder(settings)
        self.feed = feed
        self.writer = BulkWriter(self.client, settings, settings.index_alias)
        self.applied = Applied()  # acknowledged by this process: overlap re-reads skip them

    async def close(self) -> None:
        if self.feed is not None:
            await self.feed.close()
        if self._own_client:
            await self.client.close()
        if self._motor is not None:
            self._motor.close()

    async def _hard_deletes(self, deletes: list[HardDelete]) -> list[Action]:
        """Versions for deletes whose document is gone: one past what the index holds."""
        if not deletes:
            return []
        resp = await self.client.mget(
            index=self.settings.index_alias,
            body={"ids": [d.id for d in deletes]},
            _source=False,
            params={"version": "true"},
        )
        actions = []
        for doc in resp.get("docs", []):
            if doc.get("found"):
                actions.append(Action("delete", doc["_id"], int(doc["_version"]) + 1))
        return actions

    async def apply(self, batch: ChangeBatch) -> Counters:
        docs = self.applied.fresh(batch.docs)
        if not docs and not batch.hard_deletes:
            return Counters()
        prepared = await asyncio.to_thread(
            prepare, docs, self.embedder, self.settings, source="sync", delete_invalid=True
        )
        prepared.actions += await self._hard_deletes(batch.hard_deletes)
        seen = len(docs) + len(batch.hard_deletes)
        stats = await write(prepared, self.writer, self.db, source="sync", seen=seen)
        self.applied.remember(docs)
        return stats

    async def once(self) -> SyncReport:
        """Drain the feed until caught up, committing after each acknowledged batch."""
        t0 = time.perf_counter()
        if self.feed is None:
            self.feed = await open_feed(self.settings, self.db)
        else:
            await self.feed.start()
        report = SyncReport(mode=self.feed.name)
        while True:
            batch = await self.feed.next_batch()
            if batch is None:
                break
            stats = await self.apply(batch)
            await self.feed.commit(batch)  # only after every item was acknowledged
            report.batches += 1
            report.add(stats)
        report.took_s = time.perf_counter() - t0
        return report


async def sync_once(
    settings: Settings,
    *,
    client: Any | None = None,
    db: Any | None = None,
    embedder: Embedder | None = None,
) -> SyncReport:
    """One catch-up pass of the change feed (what ``opendisco sync --once`` runs)."""
    syncer = Syncer(settings, client=client, db=db, embedder=embedder)
    try:
        return await syncer.once()
    finally:
        await syncer.close()


async def run_sync(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_report: Callable[[SyncReport], None] | None = None,
) -> None:
    """Sync until ``stop`` is set, polling every ``sync_poll_interval`` seconds when idle."""
    stop = stop or asyncio.Event()
    syncer = Syncer(settings)
    try:
        while not stop.is_set():
            report = await syncer.once()
            if on_report is not None and report.changes:
                on_report(report)
            if report.changes:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.sync_poll_interval)
    finally:
        await syncer.close()
