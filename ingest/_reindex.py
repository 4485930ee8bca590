"""Zero-downtime rebuild: MongoDB → new ``<alias>-v<UTC timestamp>`` index → atomic alias swap.

1. delete partial indices left by crashed runs (``_meta.opendisco.state == "building"`` and
   the builder process is gone or the index is older than ``STALE_BUILD``);
2. create the new index from ``index_templates/items.json`` (refresh off while building);
3. warm the embedding cache with one sequential scan when the build spans several batches
   (``Embedder.prefetch``, bounded by ``embed_cache_prefetch_max`` and ``PREFETCH_RATIO``
   times the document count); then stream MongoDB in keyset pages of ``reindex_read_page``
   (motor), in ``bulk_batch_size`` batches → validate (→ dead letters) → encode (cached) →
   bulk with external versions, encoding the next batch while the previous bulk is in flight;
4. refresh and verify the count equals the acknowledged documents (else drop the new index
   and raise; the alias keeps serving the old one);
5. catch up on writes made during the build (``updated_at`` window), swap the alias in one
   ``_aliases`` call, catch up once more, and keep ``keep_versions`` old indices.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opensearchpy.exceptions import NotFoundError

from opendisco import index_templates
from opendisco._exceptions import IndexStateError
from opendisco._settings import Settings

from ._apply import ApplyStats, Prepared, prepare, write
from ._bulk import BulkWriter
from ._embed import Embedder
from ._feed import seed_resume_token
from ._io import backends
from ._sample import now_ms
from ._store import items_collection, load_state, pages, save_state, state_key

__all__ = [
    "PREFETCH_RATIO",
    "STALE_BUILD",
    "ReindexReport",
    "alias_targets",
    "cleanup_partial",
    "new_index_name",
    "reindex",
    "swap_alias",
    "versioned_indices",
]

STALE_BUILD = timedelta(hours=6)
PREFETCH_RATIO = 4  # scan at most this many cache entries per document to index
Progress = Callable[[int, int], None]


@dataclass
class ReindexReport:
    alias: str
    index: str
    total: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    encoded: int = 0
    cache_hits: int = 0
    retries: int = 0
    caught_up: int = 0
    previous: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    took_s: float = 0.0
    encode_s: float = 0.0
    prefetched: int = 0
    prefetch_s: float = 0.0

    @property
    def docs_per_s(self) -> float:
        return self.indexed / self.took_s if self.took_s else 0.0


def new_index_name(alias: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{alias}-v{now:%Y%m%d%H%M%S%f}"


async def versioned_indices(client: Any, alias: str) -> dict[str, dict[str, Any]]:
    """``{index: _meta.opendisco}`` of every ``<alias>-v*`` index."""

    try:
        resp = await client.indices.get_mapping(index=f"{alias}-v*", expand_wildcards="all")
    except NotFoundError:
        return {}
    out = {}
    for name, body in resp.items():
        meta = (body.get("mappings") or {}).get("_meta") or {}
        out[name] = meta.get("opendisco") or {}
    return out


async def alias_targets(client: Any, alias: str) -> list[str]:
    try:
        resp = await client.indices.get_alias(name=alias)
    except NotFoundError:
        return []
    return sorted(resp)


def _builder_gone(meta: dict[str, Any]) -> bool:
    started = meta.get("started_at")
    if started:
        age = datetime.now(UTC) - datetime.fromisoformat(started)
        if age > STALE_BUILD:
            return True
    if meta.get("host") != socket.gethostname():
        return False
    pid = meta.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return pid == os.getpid()  # our own earlier, failed attempt


async def cleanup_partial(client: Any, alias: str) -> list[str]:
    """Delete indices whose build never finished (never the alias target)."""
    targets = set(await alias_targets(client, alias))
    removed = []
    for name, meta in (await versioned_indices(client, alias)).items():
        if name in targets or meta.get("state") != "building":
            continue
        if _builder_gone(meta):
            await client.indices.delete(index=name, ignore_unavailable=True)
            removed.append(name)
    return removed


async def swap_alias(client: Any, alias: str, index: str) -> list[str]:
    """Point ``alias`` at ``index`` only, in one atomic ``_aliases`` call; return the old ones."""
    if await client.indices.exists(index=alias) and not await client.indices.exists_alias(
        name=alias
    ):
        raise IndexStateError(f"{alias} is a concrete index, not an alias; delete it first")
    old = [t for t in await alias_targets(client, alias) if t != index]
    actions: list[dict[str, Any]] = [{"remove": {"index": t, "alias": alias}} for t in old]
    actions.append({"add": {"index": index, "alias": alias}})
    await client.indices.update_aliases(body={"actions": actions})
    return old


async def _retain(client: Any, alias: str, current: str, keep: int) -> list[str]:
    indices = await versioned_indices(client, alias)
    done = sorted(
        (n for n, m in indices.items() if n != current and m.get("state") == "complete"),
        reverse=True,
    )
    removed = done[keep:]
    for name in removed:
        await client.indices.delete(index=name, ignore_unavailable=True)
    return removed


async def catch_up(
    settings: Settings,
    db: Any,
    writer: BulkWriter,
    embedder: Embedder,
    since: datetime,
) -> ApplyStats:
    """Re-apply every item written since ``since`` (tombstones become deletes)."""
    coll = items_collection(db, settings)
    stats = ApplyStats()
    async for page in pages(coll, {"updated_at": {"$gte": since}}, settings.bulk_batch_size):
        prepared = await asyncio.to_thread(
            prepare, page, embedder, settings, source="reindex", delete_invalid=True
        )
        stats.add(await write(prepared, writer, db, source="reindex", seen=len(page)))
    return stats


async def reindex(
    settings: Settings,
    *,
    client: Any | None = None,
    db: Any | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> ReindexReport:
    """Rebuild the items index from MongoDB and swap ``settings.index_alias`` to it."""
    embedder = embedder or Embedder(settings)
    alias = settings.index_alias
    t0 = time.perf_counter()
    enc0 = embedder.encode_seconds
    async with backends(settings, client, db, "reindex") as (client, db):
        removed = await cleanup_partial(client, alias)
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
        await client.indices.create(index=index, body=body)
        await seed_resume_token(settings, db)  # change streams resume from before the read
        since = now_ms() - timedelta(seconds=settings.sync_overlap_seconds)
        writer = BulkWriter(client, settings, index)
        coll = items_collection(db, settings)
        query = {"deleted": {"$ne": True}}
        report.total = await coll.count_documents(query)
        if report.total > settings.bulk_batch_size:
            t_pre = time.perf_counter()
            cap = min(settings.embed_cache_prefetch_max, PREFETCH_RATIO * report.total)
            report.prefetched = await asyncio.to_thread(embedder.prefetch, cap)
            report.prefetch_s = time.perf_counter() - t_pre
        stats = ApplyStats()
        done = 0
        pending: asyncio.Task[ApplyStats] | None = None

        async def drain() -> None:
            nonlocal pending, done
            if pending is not None:
                result = await pending
                stats.add(result)
                done += result.seen
                pending = None
                if progress:
                    progress(done, report.total)

        async def launch(docs: list[dict[str, Any]]) -> None:
            nonlocal pending
            prepared: Prepared = await asyncio.to_thread(
                prepare, docs, embedder, settings, source="reindex", delete_invalid=False
            )
            await drain()  # the previous bulk ran while we encoded this batch
            pending = asyncio.create_task(
                write(prepared, writer, db, source="reindex", seen=len(docs))
            )

        try:
            batch = settings.bulk_batch_size
            async for page in pages(coll, query, max(batch, settings.reindex_read_page)):
                for start in range(0, len(page), batch):
                    await launch(page[start : start + batch])
            await drain()
        except BaseException:
            if pending is not None and not pending.done():
                pending.cancel()
            raise

        await client.indices.put_settings(
            index=index, body={"index": {"refresh_interval": refresh}}
        )
        await client.indices.refresh(index=index)
        count = (await client.count(index=index))["count"]
        if count != len(stats.indexed_ids):
            await client.indices.delete(index=index, ignore_unavailable=True)
            raise IndexStateError(
                f"{index}: {count} documents after build, {len(stats.indexed_ids)} acknowledged;"
                " alias left unchanged"
            )
        caught = await catch_up(settings, db, writer, embedder, since)
        await client.indices.put_mapping(
            index=index,
            body={"_meta": {"opendisco": {"state": "complete", "count": count}}},
        )
        report.previous = await swap_alias(client, alias, index)
        caught.add(await catch_up(settings, db, writer, embedder, since))
        await client.indices.refresh(index=index)
        report.removed += await _retain(client, alias, index, settings.keep_versions)
        await _seed_polling_checkpoint(settings, db, since)
        stats.add(caught)
        report.indexed = len(stats.indexed_ids)
        report.caught_up = caught.seen
        report.dead_lettered = len(stats.dead_ids)  # distinct documents
        report.encoded = stats.encoded
        report.cache_hits = stats.cache_hits
        report.retries = stats.retries
        report.took_s = time.perf_counter() - t0
        report.encode_s = embedder.encode_seconds - enc0
        return report


async def _seed_polling_checkpoint(settings: Settings, db: Any, since: datetime) -> None:
    """A fresh sync after a rebuild starts at the build, not at the beginning of time."""
    key = state_key(settings, "polling")
    state = await load_state(db, key)
    if state is None:
        await save_state(db, key, {"mode": "polling", "ts": since, "last_id": ""})
