"""Zero-downtime rebuild: MongoDB → new ``<alias>-v<UTC timestamp>`` index → atomic alias swap.

0. take the rebuild lease of the alias (``_build_lease``): a second reindex of the same
   alias is refused while this one runs;
1. delete partial indices left by crashed runs (``_meta.opendisco.state == "building"``: under
   the lease no other build of the alias runs, whatever host or pid a partial index names);
2. create the new index from ``index_templates/items.json`` (refresh off while building);
3. read MongoDB **once**: one unfiltered, unsorted cursor (tombstones dropped here: FerretDB
   pays more for a filter than for sending them), ``bulk_batch_size`` documents per batch,
   the next batch read while this one is prepared (validate → dead letters, embed: one
   ``_id $in`` cache lookup per batch, encode the actions with orjson, in a thread) and up to
   ``bulk_concurrency`` external-versioned bulks in flight (``_pipeline``); each batch's
   items get their trained vectors from the behaviour collection (``_behaviour``: one
   ``_id $in`` read per batch);
4. refresh and verify the count equals the acknowledged documents (else drop the new index
   and raise; the alias keeps serving the old one); a count some shards did not answer is
   asked again, and fails the rebuild naming them once the retries are spent;
5. one catch-up of the writes made during the build (``updated_at`` window; documents the
   build already applied at their version are skipped) and of the behaviour vectors written
   during it (their items sent again at the same version; every item of a model whose
   publish switched the pointer during the build), the removal of the documents
   hard-deleted since the build read them (``_reconcile.remove_gone``: the new index's ids
   merged with MongoDB's; before, the new index served them until a reconciliation),
   swap the alias in one ``_aliases``
   call, record the catch-up's start as the sync *floor* (pending before the swap, final
   after it: ``_checkpoints``; a running sync
   replays from there what it may have applied to the old index meanwhile; a fresh one starts
   there), keep the ``keep_versions`` newest old indices the alias served (a complete one a
   run killed before its swap left is deleted, not counted: ``_indices.beyond_retention``);
6. sweep the open dead letters (``_letters.sweep``): every bulk resolved those of the
   documents it indexed; this resolves those of documents tombstoned or deleted since.

Cost on FerretDB (which pushes down only ``_id`` equality and ``_id $in``): one scan of the
items for the build, one for the catch-up window, one ``_id $in`` read of behaviour vectors
per batch, and one indexed cache lookup per document; then, for the hard deletes, one read
of ``_id`` and ``version`` in ``_id`` order beside the new index's ids (20,000 documents:
2.4–3.8 s on FerretDB, under 2% of a warm build).

A build killed midway is not resumed: the next run drops the partial index (step 1) and
rebuilds. What the killed run encoded is in the embedding cache, so the rebuild pays only the
warm rate for the part already done (measured in bench/README.md), while resuming would need
a position in the read — a sort by ``_id``, which costs FerretDB about 30% more CPU per
document on *every* build (0.61 → 0.78 ms measured) — or a scan of the partial index plus a
count check that survives documents deleted between the two runs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from opendisco import index_templates
from opendisco._exceptions import IndexStateError
from opendisco._settings import Settings
from opendisco._store import detect_capabilities, now_ms

from ._apply import Applied, Counters, prepare, write
from ._behaviour import join_behaviour, marks, prepare_refresh
from ._behaviour_model import served_collection
from ._build_lease import BuildLease, build_lease
from ._bulk import BulkWriter, patiently
from ._checkpoints import save_floor
from ._embed import Embedder
from ._feed import seed_resume_token
from ._indices import cleanup_partial, create_build, new_index_name, retain, swap_alias
from ._io import backends
from ._letters import sweep
from ._letters_admin import purge_resolved
from ._pipeline import Pipeline, read_ahead
from ._reconcile import remove_gone
from ._schema import is_tombstone
from ._store import items_collection, stream

__all__ = ["ReindexReport", "reindex", "remove_partial_builds"]

Progress = Callable[[int, int | None], None]  # (documents done, total when known)
T = TypeVar("T")


@dataclass(kw_only=True)
class ReindexReport(Counters):
    """The counters of a rebuild (build and catch-up together) and what it did to the alias."""

    alias: str
    index: str
    total: int = 0  # documents read by the build
    caught_up: int = 0  # changes the catch-up applied (written during the build)
    previous: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    took_s: float = 0.0
    encode_s: float = 0.0

    @property
    def docs_per_s(self) -> float:
        return self.indexed / self.took_s if self.took_s else 0.0


async def reindex(
    settings: Settings,
    *,
    client: Any | None = None,
    db: Any | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> ReindexReport:
    """Rebuild the items index from MongoDB and swap ``settings.index_alias`` to it."""
    own_embedder = embedder is None
    embedder = embedder or Embedder(settings)
    try:
        async with (
            backends(settings, client, db, "reindex") as (client, db),
            build_lease(db, settings.index_alias) as lease,
        ):
            return await _reindex(settings, client, db, embedder, progress, lease)
    finally:
        if own_embedder:
            embedder.close()


async def _reindex(
    settings: Settings,
    client: Any,
    db: Any,
    embedder: Embedder,
    progress: Progress | None,
    lease: BuildLease,
) -> ReindexReport:
    alias = settings.index_alias
    t0 = time.perf_counter()
    enc0 = embedder.encode_seconds
    # ours: see step 1; a storm at the start is waited out like one during the build
    removed = await _patiently(settings, lambda: cleanup_partial(client, alias, leased=True))
    index = new_index_name(alias)
    report = ReindexReport(alias=alias, index=index, removed=removed)
    body = index_templates.render("items", settings)
    refresh = body["settings"]["index"].get("refresh_interval", "1s")
    body["settings"]["index"]["refresh_interval"] = "-1"
    body["mappings"]["_meta"] = {
        "opendisco": {
            "state": "building",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(),
        }
    }
    # retried too: the "already exists" of a create that landed is ours (create_build)
    await _patiently(settings, lambda: create_build(client, index, body))
    await seed_resume_token(settings, db)  # change streams resume from before the read
    since = now_ms() - timedelta(seconds=settings.sync_overlap_seconds)
    writer = BulkWriter(client, settings, index, retry_for=settings.reindex_retry_seconds)
    coll = items_collection(db, settings)
    total = await _estimated_total(coll, db)
    model = (await served_collection(db, settings)).name  # the vectors the build joins
    applied = Applied(max_items=10**9)  # documents written during the build, as read
    joined = Applied(max_items=10**9)  # vectors written during the build, sent with their items

    def sent(found: list[dict[str, Any]]) -> None:
        joined.remember(marks(d for d in found if _written_since(d, since)))

    def remember(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        applied.remember(d for d in docs if _written_since(d, since))
        return [d for d in docs if not is_tombstone(d)]  # nothing to build

    async def done(_: Any, counters: Counters) -> None:
        report.total += counters.seen
        if progress:  # the size is an estimate: documents written during the build add up
            progress(report.total, None if total is None else max(total, report.total))

    build = await _apply_stream(
        settings,
        db,
        writer,
        embedder,
        {},  # no filter: on FerretDB a filter costs more than sending the few tombstones
        delete_invalid=False,
        select=remember,
        on_done=done,
        joined=sent,
    )
    # the build is done: from here a storm must not cost it (idempotent calls, retried)
    settle = {"index": {"refresh_interval": refresh}}
    await _on_built(settings, lambda: client.indices.put_settings(index=index, body=settle))
    await _on_built(settings, lambda: client.indices.refresh(index=index))
    # a count some shards did not answer is asked again, never taken for the index's
    counted = await _on_built(
        settings, lambda: client.count(index=index), whole=f"counting {index} after the build"
    )
    count = counted["count"]
    if count != build.indexed:
        await client.indices.delete(index=index, ignore_unavailable=True)
        raise IndexStateError(
            f"{index}: {count} documents after build, {build.indexed} acknowledged;"
            " alias left unchanged"
        )
    # one catch-up of what was written during the build, then the swap; what is written
    # from the catch-up's start on is replayed by sync from the floor
    caught_from = now_ms() - timedelta(seconds=settings.sync_overlap_seconds)
    caught = await _apply_stream(
        settings,
        db,
        writer,
        embedder,
        {"updated_at": {"$gte": since}},
        delete_invalid=True,
        select=applied.fresh,
        order=[("_id", 1)],
        joined=sent,
    )
    # and the vectors `opendisco train` wrote during the build (their items did not change)
    served = await served_collection(db, settings)  # the model the new index gets
    caught.add(await _refresh_stream(settings, db, writer, embedder, since, joined, model, served))
    # and the documents deleted from MongoDB since the build read them (no catch-up sees a
    # hard delete): out of the new index before it serves
    await _on_built(settings, lambda: client.indices.refresh(index=index))
    caught.add(await remove_gone(db, settings, writer, source="reindex"))
    lease.check()  # a rebuild that lost its lease leaves the alias to the one that took it
    done = {"_meta": {"opendisco": {"state": "complete", "count": count}}}
    await _on_built(settings, lambda: client.indices.put_mapping(index=index, body=done))
    # pending before the swap: a crash between the swap and the floor still has sync replay
    await save_floor(db, settings, caught_from, index, pending=True, model=served.name)
    report.previous = await _on_built(settings, lambda: swap_alias(client, alias, index))
    await save_floor(db, settings, caught_from, index, model=served.name)
    await _on_built(settings, lambda: client.indices.refresh(index=index))
    report.removed += await _patiently(
        settings, lambda: retain(client, alias, index, settings.keep_versions, report.previous)
    )
    report.add(build)
    report.add(caught)
    # refusals no bulk settles: tombstones (the build skips them) and hard deletes
    report.dead_letters_resolved += await sweep(db, coll, writer.versions, source="reindex")
    report.dead_letters_purged += await purge_resolved(
        db, settings.items_collection, settings.dead_letter_days
    )
    report.caught_up = caught.seen
    report.took_s = time.perf_counter() - t0
    report.encode_s = embedder.encode_seconds - enc0
    return report


async def remove_partial_builds(
    settings: Settings, *, client: Any | None = None, db: Any | None = None
) -> list[str]:
    """Step 1 alone (``verify --repair``): delete the partial indices of rebuilds that died,
    under the alias's rebuild lease; :class:`IndexStateError` while a reindex runs (its
    index is not a partial one). Returns the indices deleted."""
    async with (
        backends(settings, client, db, "removing partial builds") as (client, db),
        build_lease(db, settings.index_alias),
    ):
        alias = settings.index_alias
        return await _patiently(settings, lambda: cleanup_partial(client, alias, leased=True))


def _patiently(settings: Settings, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    """An idempotent engine call of the rebuild, retried like its bulks (a storm at the end
    of a build failed the rebuild at once and threw the complete build away; one at its
    start failed it before it began)."""
    return patiently(call, settings, retry_for=settings.reindex_retry_seconds)


def _on_built(
    settings: Settings, call: Callable[[], Awaitable[T]], *, whole: str | None = None
) -> Awaitable[T]:
    """:func:`_patiently`, for a call about the index this rebuild created: an answer that it
    does not exist came from a node behind on the cluster state and is retried too (a node
    resumed after a pause answered a refresh of the new index 404: the build thrown away);
    ``whole``: a partial answer too (:func:`patiently`)."""
    return patiently(
        call, settings, retry_for=settings.reindex_retry_seconds, own_index=True, whole=whole
    )


async def _apply_stream(
    settings: Settings,
    db: Any,
    writer: BulkWriter,
    embedder: Embedder,
    query: Mapping[str, Any],
    *,
    delete_invalid: bool,
    select: Callable[[list[dict[str, Any]]], list[Any]],
    on_done: Any = None,
    order: list[tuple[str, int]] | None = None,
    joined: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Counters:
    """Stream ``query`` through prepare and bounded concurrent bulks (the build in natural
    order: a sort costs FerretDB ~30% more CPU per document and buys nothing here)."""
    coll = items_collection(db, settings)
    batch = settings.bulk_batch_size
    async with (
        stream(coll, query, batch, sort=order) as batches,
        Pipeline[None](settings.bulk_concurrency, on_done) as pipe,
    ):
        async for docs in read_ahead(batches):
            docs = select(docs)
            if not docs:
                continue
            docs = await join_behaviour(db, settings, docs, joined)
            prepared = await asyncio.to_thread(
                prepare, docs, embedder, settings, source="reindex", delete_invalid=delete_invalid
            )
            await pipe.submit(
                None, lambda p=prepared, n=len(docs): write(p, writer, db, source="reindex", seen=n)
            )
    return pipe.counters


async def _refresh_stream(
    settings: Settings,
    db: Any,
    writer: BulkWriter,
    embedder: Embedder,
    since: datetime,
    joined: Applied,
    model: str,
    coll: Any,
) -> Counters:
    """Send again the items whose behaviour vector changed since ``since`` and was not
    ``joined`` to them by the build or its catch-up, from ``coll`` (the model served now).
    When it is another model than ``model`` (the one served at the build's start), every
    item of it: its vectors are stamped when its publish began, which may be before
    ``since`` (a ``train`` writing when the reindex started), and the items built before its
    switch got the previous model's vectors (before, they kept them beside the new model's
    until a sync pass)."""
    counters = Counters()
    query = {"updated_at": {"$gte": since}} if coll.name == model else {}
    async with stream(coll, query, settings.bulk_batch_size) as it:
        async for page in it:
            # a vector whose _id is no string names no item (``BehaviourFeed.mine``)
            page = [d for d in page if isinstance(d.get("_id"), str)]
            fresh = {m["_id"] for m in joined.fresh(marks(page))}
            changed = [d for d in page if d["_id"] in fresh]
            prepared, items = await prepare_refresh(
                db, settings, embedder, changed, source="reindex"
            )
            counters.add(await write(prepared, writer, db, source="reindex", seen=len(items)))
    return counters


async def _estimated_total(coll: Any, db: Any) -> int | None:
    """The collection's size for progress, when the server knows it without a scan."""
    if (await detect_capabilities(db)).ferretdb:
        return None  # FerretDB counts by scanning: as costly as the build's own read
    return int(await coll.estimated_document_count())


def _written_since(doc: Mapping[str, Any], since: datetime) -> bool:
    updated = doc.get("updated_at")
    return isinstance(updated, datetime) and updated >= since
