"""Incremental sync: change feed → validate/embed → external-versioned bulk → checkpoint.

A worker holds some of the feed's partitions under leases (``_partitions``) and runs passes
over them: one pass reads the feed once (``ChangeFeed.batches``), prepares each batch in a
thread while up to ``bulk_concurrency`` bulks are in flight (``_pipeline``), and commits the
partitions' checkpoint of a batch only after it and every batch before it were acknowledged
(2xx, or 409 meaning a newer copy is already there) or recorded as dead letters; a failure
before that leaves the checkpoint where it was, and the batch is replayed — replays, and
reordering between concurrent bulks, are harmless because every write carries the
document's external version. A batch with hard deletes waits for the bulks in flight first:
the version of its deletes is read from the index. Before every bulk and commit the worker
checks that its leases are still valid; if not, the pass stops (nothing is committed).

Each pass reads the items feed, then the feed of trained behaviour vectors
(``_behaviour.BehaviourFeed``, same partitions, its own checkpoints): every changed vector's
item is sent again at its current version (``external_gte``), so ``opendisco train`` never
has to touch an item for its vectors to reach the engine. ``run_sync`` (``_run_sync``) is
the continuous loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._exceptions import BackendError, IndexStateError
from opendisco._settings import Settings
from opendisco._store import renewing

from ._apply import Applied, Counters, Prepared, prepare, write
from ._behaviour import BehaviourFeed, join_behaviour, marks, prepare_refresh
from ._bulk import Action, BulkWriter
from ._checkpoints import settle_floor
from ._embed import Embedder
from ._feed import ChangeBatch, ChangeFeed, HardDelete, open_feed
from ._indices import alias_targets
from ._partitions import PartitionLeases
from ._pipeline import Pipeline, read_ahead
from ._reconcile import ReconcileReport, reconcile
from ._stalls import Stalls

__all__ = ["LeaseLost", "SyncReport", "Syncer", "sync_once"]

#: passes ``sync_once`` runs when its leases lapse mid-pass (each resumes from the checkpoints)
ONCE_ATTEMPTS = 5
#: at most this long for a stopping worker to release its leases (:meth:`Syncer.close`)
LEAVE_S = 2.0

log = logging.getLogger("opendisco.ingest.sync")


class LeaseLost(BackendError):
    """This worker's leases lapsed (renewals failed or another worker took a partition)."""


@dataclass(kw_only=True)
class SyncReport(Counters):
    """The counters of one sync pass (``seen`` = changes read) and how it went."""

    mode: str
    partitions: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # held by another live worker
    batches: int = 0
    behaviour: int = 0  # of ``seen``: trained vectors sent again with their items
    took_s: float = 0.0
    reconciled: ReconcileReport | None = None  # ``sync_once(reconcile=True)``'s pass

    @property
    def changes(self) -> int:
        return self.seen


class Syncer:
    """Holds the clients, the leases, the feed and the embedder across passes."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: Any | None = None,
        db: Any | None = None,
        embedder: Embedder | None = None,
        worker: str | None = None,
    ) -> None:
        self.settings = settings
        self._own_client = client is None
        self.client = client or clients.async_opensearch(settings)
        self._mongo = clients.mongo_async(settings) if db is None else None
        self.db = db if db is not None else self._mongo[settings.mongo_db]  # type: ignore[index]
        self._own_embedder = embedder is None
        self.embedder = embedder or Embedder(settings)
        self.leases = PartitionLeases(settings, self.db, worker)
        self.feed: ChangeFeed | None = None
        # gaps between passes, kept when a feed is reopened after a failed pass (one per feed:
        # each notes its own passes' starts)
        self.stalls, self.behaviour_stalls = Stalls(), Stalls()
        self.writer = BulkWriter(self.client, settings, settings.index_alias, alias=True)
        self.applied = Applied()  # acknowledged by this process: overlap re-reads skip them
        self.behaviour_feed: BehaviourFeed | None = None
        self.applied_behaviour = Applied()  # vectors sent, by their updated_at
        self.checked = False

    @property
    def worker(self) -> str:
        return self.leases.worker

    async def check(self) -> None:
        """The alias must exist (a configuration error otherwise: run a reindex first)."""
        if not await self._serving():
            raise IndexStateError(
                f"alias {self.settings.index_alias} does not exist: run `opendisco reindex`"
            )
        self.checked = True

    async def _serving(self) -> list[str]:
        with backend_errors("checking the alias failed"):
            return await alias_targets(self.client, self.settings.index_alias)

    async def close(self) -> None:
        """Release the leases (for at most :data:`LEAVE_S`: a store that does not answer kept
        a stopping worker ~10 s; its partitions then free up when their leases expire) and
        close the clients."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._leave(), LEAVE_S)
        if self._own_client:
            await self.client.close()
        if self._mongo is not None:
            await clients.close_mongo(self._mongo)
        if self._own_embedder:
            self.embedder.close()

    async def _leave(self) -> None:
        await self.reset()
        await self.leases.leave()

    async def reset(self) -> None:
        """Drop the feed after a failure (the next pass reopens it from the checkpoints)."""
        if self.feed is not None:
            with contextlib.suppress(Exception):
                await self.feed.close()
            self.feed = None
        self.behaviour_feed = None

    async def _hard_deletes(self, deletes: list[HardDelete]) -> tuple[list[Action], list[Action]]:
        """Deletes for documents gone from MongoDB at one past the version the index holds,
        and the gone ones it does not hold: nothing to write, but their dead letters are
        settled (a refused document deleted; before, a change stream's delete event left
        its record open until the next reconciliation's sweep). A document still in MongoDB
        whose version became unusable loses its indexed copy at the version the index holds
        (``external_gte``), not the next one: that is the version its fix will take (before,
        the fix met the delete's tombstone, 409, and stayed out of the index for
        ``index.gc_deletes``)."""
        held = await self.writer.versions([d.id for d in deletes])
        writes, settled = [], []
        for d in deletes:
            if d.id in held and d.gone:
                writes.append(Action("delete", d.id, held[d.id] + 1, settles="any").with_data())
            elif d.id in held:
                writes.append(Action("delete", d.id, held[d.id], settles="").refreshed())
            elif d.gone:
                settled.append(Action("delete", d.id, 0, settles="any"))
        return writes, settled

    async def _prepare(
        self, batch: ChangeBatch, fresh_only: bool = True
    ) -> tuple[Prepared, Callable[[], None], int]:
        """The writes for a batch of changed items, what to remember once they are
        acknowledged, and how many changes they are."""
        docs = self.applied.fresh(batch.docs) if fresh_only else list(batch.docs)
        if not docs and not batch.hard_deletes:
            return Prepared(), lambda: None, 0
        docs = await join_behaviour(self.db, self.settings, docs)
        prepared = await asyncio.to_thread(
            prepare, docs, self.embedder, self.settings, source="sync", delete_invalid=True
        )
        writes, settled = await self._hard_deletes(batch.hard_deletes)
        prepared.actions += writes
        prepared.settled += settled
        return prepared, lambda: self.applied.remember(docs), len(docs) + len(batch.hard_deletes)

    async def _prepare_behaviour(
        self, batch: ChangeBatch
    ) -> tuple[Prepared, Callable[[], None], int]:
        """The same for a batch of changed behaviour vectors (their items sent again)."""
        sent = marks(batch.docs)
        fresh = {m["_id"] for m in self.applied_behaviour.fresh(sent)}
        changed = [d for d in batch.docs if d.get("_id") in fresh]
        if not changed:
            return Prepared(), lambda: None, 0
        prepared, _ = await prepare_refresh(
            self.db, self.settings, self.embedder, changed, source="sync"
        )
        return prepared, lambda: self.applied_behaviour.remember(sent), len(changed)

    def _guard(self, partitions: list[int] | None) -> None:
        """Refuse to write for partitions this worker may no longer hold."""
        if partitions is None:
            return
        if not self.leases.valid or sorted(self.leases.held) != partitions:
            raise LeaseLost(f"worker {self.worker}: leases on {partitions} lapsed")

    async def _write(
        self,
        prepared: Prepared,
        remember: Callable[[], None],
        seen: int,
        partitions: list[int] | None = None,
    ) -> Counters:
        if not prepared.actions and not prepared.letters and not prepared.settled:
            remember()
            return Counters()
        self._guard(partitions)
        started = time.time()
        stats = await write(prepared, self.writer, self.db, source="sync", seen=seen)
        log.debug(
            "bulk worker=%s partitions=%s start=%.3f end=%.3f docs=%d",
            self.worker,
            partitions,
            started,
            time.time(),
            len(prepared.actions),
        )
        remember()
        return stats

    async def apply(self, batch: ChangeBatch, *, fresh_only: bool = True) -> Counters:
        """Apply one batch now (no checkpoint; what a pass does to each of its batches)."""
        return await self._write(*await self._prepare(batch, fresh_only))

    async def _feed_for(self, partitions: list[int]) -> ChangeFeed:
        if self.feed is not None and self.feed.partitions != partitions:
            await self.reset()
        if self.feed is None:
            self.feed = await open_feed(
                self.settings, self.db, partitions=partitions, owner=self.worker, stalls=self.stalls
            )
        return self.feed

    async def once(self, *, take_all: bool = False) -> SyncReport:
        """One pass over the held partitions until caught up (``take_all``: first take
        every partition no live worker holds, waiting out the leases of dead ones)."""
        t0 = time.perf_counter()
        held, skipped = await self._coordinate(take_all)
        if held:
            await settle_floor(self.db, self.settings, self._serving)
        feed = await self._feed_for(held) if held else None
        report = SyncReport(mode=feed.name if feed else "", partitions=held, skipped=skipped)
        if feed is None:
            return report
        if self.behaviour_feed is None or self.behaviour_feed.partitions != held:
            self.behaviour_feed = BehaviourFeed(
                self.settings, self.db, held, self.worker, self.behaviour_stalls
            )
        async with self._renewing():
            await self._pass(feed, self._prepare, self.applied, held, report)
            # after the items: a vector is sent with its item as MongoDB holds it by then
            behaviour = await self._pass(
                self.behaviour_feed, self._prepare_behaviour, self.applied_behaviour, held, report
            )
        report.behaviour = behaviour.seen
        report.took_s = time.perf_counter() - t0
        return report

    async def _pass(
        self,
        feed: ChangeFeed,
        prepare_batch: Callable[[ChangeBatch], Awaitable[tuple[Prepared, Callable[[], None], int]]],
        applied: Applied,
        held: list[int],
        report: SyncReport,
    ) -> Counters:
        """Read ``feed`` until caught up; commit each batch once it and every batch before
        it were acknowledged."""

        async def committed(batch: ChangeBatch, _: Counters) -> None:
            self._guard(held)
            await feed.commit(batch)  # this batch and all before it were acknowledged

        async with (
            feed.batches() as batches,
            Pipeline[ChangeBatch](self.settings.bulk_concurrency, committed) as pipe,
        ):
            if feed.rewound:  # a reindex swapped the index: what we applied may be gone
                applied.clear()
            async for batch in read_ahead(batches):
                if batch.hard_deletes:
                    await pipe.drain()
                prepared, remember, n = await prepare_batch(batch)
                await pipe.submit(
                    batch, lambda p=prepared, r=remember, n=n: self._write(p, r, n, held)
                )
        report.add(pipe.counters)
        report.batches += pipe.batches
        return pipe.counters

    async def _coordinate(self, take_all: bool, wait: bool = True) -> tuple[list[int], list[int]]:
        held = await self.leases.rebalance(take_all=take_all)
        deadline = time.monotonic() + self.settings.sync_lease_seconds + 1.0
        while wait and take_all and len(held) < self.leases.count and time.monotonic() < deadline:
            await asyncio.sleep(min(1.0, self.settings.sync_lease_seconds / 3))
            held = await self.leases.rebalance(take_all=True)
        partitions = sorted(held)
        skipped = [p for p in range(self.leases.count) if p not in held] if take_all else []
        if skipped:
            log.warning("worker %s: partitions %s are held by another worker", self.worker, skipped)
        return partitions, skipped

    def _renewing(self) -> Any:
        """Renew the leases in the background while a pass runs (a failed renewal is logged;
        the pass stops at its next guard if the leases lapse)."""
        return renewing(
            self.leases.renew,
            self.settings.sync_lease_seconds / 3,
            lambda exc: log.warning("worker %s: lease renewal failed: %s", self.worker, exc),
        )

    async def reconcile(self, *, take_all: bool = False, wait: bool = True) -> ReconcileReport:
        """Compare the held partitions of MongoDB and the index and repair what differs
        (``take_all`` and ``wait``: first wait out the leases of dead workers, as ``once``)."""
        held, _ = await self._coordinate(take_all, wait)
        if not held:
            return ReconcileReport()
        # it compares what search sees: a document the last pass indexed would be taken
        # for missing and sent again
        with backend_errors("refreshing the alias failed"):
            await self.client.indices.refresh(index=self.settings.index_alias)
        async with self._renewing():
            report = await reconcile(self, owns=self.leases.owns, guard=lambda: self._guard(held))
        report.partitions = held
        return report

    async def health(self) -> str:
        """One line on both backends (logged while sync backs off)."""
        parts = []
        try:
            resp = await self.client.cluster.health(params={"timeout": "2s"}, request_timeout=3)
            parts.append(f"opensearch={resp.get('status')}")
        except Exception as exc:  # reporting, not handling: any failure is the answer
            parts.append(f"opensearch=unreachable ({type(exc).__name__})")
        try:
            await asyncio.wait_for(self.db.command("ping"), timeout=3)
            parts.append("mongodb=ok")
        except Exception as exc:
            parts.append(f"mongodb=unreachable ({type(exc).__name__})")
        return " ".join(parts)


async def sync_once(
    settings: Settings,
    *,
    client: Any | None = None,
    db: Any | None = None,
    embedder: Embedder | None = None,
    reconcile: bool = False,
) -> SyncReport:
    """One catch-up pass over every partition (what ``opendisco sync --once`` runs): waits
    out the leases of dead workers, skips (and reports) partitions live workers hold.

    ``reconcile``: then one reconciliation pass over the same partitions (``report.
    reconciled``), what ``opendisco sync --once`` does unless ``--no-reconcile``: hard
    deletes and backdated writes, which no pass sees, reach the index now rather than at a
    running worker's next ``sync_reconcile_interval`` (before, a one-off sync left a
    document deleted from MongoDB in the index, and ``verify`` failed on it).

    A pass whose leases lapse (renewals too slow on a loaded store, or another worker took a
    partition) stops at its next guard with its checkpoints kept; it then coordinates again
    and resumes, up to ``ONCE_ATTEMPTS`` times, as the continuous loop does."""
    syncer = Syncer(settings, client=client, db=db, embedder=embedder)
    try:
        await syncer.check()
        for attempt in range(1, ONCE_ATTEMPTS + 1):
            try:
                report = await syncer.once(take_all=True)
                if reconcile and report.partitions:
                    # the pass waited out dead workers' leases already: what live ones hold
                    # is theirs to reconcile (waiting again doubled --once's time)
                    report.reconciled = await syncer.reconcile(take_all=True, wait=False)
            except LeaseLost as exc:
                if attempt == ONCE_ATTEMPTS:
                    raise
                log.warning("%s; coordinating again (attempt %d)", exc, attempt + 1)
                await syncer.reset()
                continue
            return report
        raise AssertionError("unreachable")  # the last attempt returns or raises
    finally:
        await syncer.close()
