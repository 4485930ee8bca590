"""Bulks answered by a node behind on the cluster state (a real engine behind the fault
proxy, which answers a ``_bulk`` as such a node does: every item 404
``index_not_found_exception``, nothing applied): a rebuild and a sync ride them out; a target
really gone still fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ingest_support import bump, faulty_engine

import opendisco.ingest._run_sync as run_sync_module
from opendisco import IndexStateError, Settings, clients
from opendisco.ingest import Embedder, SyncReport, alias_targets, reindex, sync_once, verify
from opendisco.ingest._run_sync import run_sync


async def test_a_rebuild_whose_bulks_reach_a_lagging_node_retries(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """A node behind on the cluster state answers a bulk into the index the rebuild just
    created with every item 404 ``index_not_found_exception`` (nothing applied): the rebuild
    failed at once with IndexStateError (seen on the 3-node cluster, the first bulks after a
    hung node came back). The items are sent again like those of a storm."""
    sent: list[str] = []

    def lagging(method: str, path: str) -> bool:
        if not path.endswith("/_bulk"):
            return False
        sent.append(path)
        return len(sent) <= 2  # the first two bulks

    async with faulty_engine(ingest_settings, bulk_backoff_max=0.2, bulk_concurrency=1) as (
        proxy,
        settings,
        client,
    ):
        proxy.missing_if = lagging
        report = await reindex(settings, client=client, embedder=embedder)
        assert len(sent) > 2 and proxy.answered.get(200, 0) >= 2
        assert report.indexed == len(ingest_catalogue) and not report.dead_lettered
        assert await alias_targets(client, settings.index_alias) == [report.index]
        assert (await verify(settings, client=client)).ok


async def _sync_past_a_lagging_node(
    settings: Settings, client: Any, embedder: Embedder, mongo_db: Any, **change: Any
) -> tuple[SyncReport, int]:
    """Item p2 changed by ``change`` after a rebuild, then synced through a node behind on
    the cluster state for the first bulk: the report and the bulks sent."""
    await reindex(settings, client=client, embedder=embedder)
    bump(mongo_db[settings.items_collection], "p2", **change)
    sent: list[str] = []

    def lagging(method: str, path: str) -> bool:
        if not path.endswith("/_bulk"):
            return False
        sent.append(path)
        return len(sent) == 1  # the first bulk

    async with faulty_engine(settings, bulk_backoff_max=0.2) as (proxy, faulty_settings, faulty):
        proxy.missing_if = lagging
        report = await sync_once(faulty_settings, client=faulty, embedder=embedder)
    return report, len(sent)


async def test_a_sync_whose_bulk_reaches_a_lagging_node_applies_the_change(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A sync bulk (``require_alias``) answered "no such index" by a node behind on the
    cluster state raised IndexStateError: what a worker takes for the alias missing, a
    configuration error it exits on (every time). Retried like a refused item, the change
    lands."""
    client = clients.async_opensearch(ingest_settings)
    try:
        report, sent = await _sync_past_a_lagging_node(
            ingest_settings, client, embedder, mongo_db, popularity=7.0
        )
        assert sent >= 2 and report.indexed >= 1
        got = await client.get(index=ingest_settings.index_alias, id="p2")
        assert got["_source"]["popularity"] == 7.0
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


async def test_a_sync_delete_answered_by_a_lagging_node_removes_the_item(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A delete item a node behind on the cluster state answered 404
    ``index_not_found_exception`` was read as the delete of a document already absent
    (acknowledged, nothing retried): the deleted item stayed in the index and was served."""
    client = clients.async_opensearch(ingest_settings)
    try:
        _, sent = await _sync_past_a_lagging_node(
            ingest_settings, client, embedder, mongo_db, deleted=True
        )
        assert sent >= 2
        assert not await client.exists(index=ingest_settings.index_alias, id="p2")
    finally:
        await client.close()


async def test_a_sync_into_an_alias_really_gone_still_fails(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """Past the retry budget a missing target is what it says: IndexStateError (the worker's
    configuration error), not a backend error retried for ever."""
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        bump(mongo_db[ingest_settings.items_collection], "p2", popularity=7.0)
        async with faulty_engine(ingest_settings, bulk_backoff_max=0.05, bulk_max_retries=2) as (
            proxy,
            settings,
            faulty,
        ):
            sent: list[str] = []

            def gone(method: str, path: str) -> bool:
                if path.endswith("/_bulk"):
                    sent.append(path)
                return path.endswith("/_bulk")

            proxy.missing_if = gone
            with pytest.raises(IndexStateError, match="no such index"):
                await sync_once(settings, client=faulty, embedder=embedder)
            assert len(sent) == 3  # the bulk and its two retries
    finally:
        await client.close()


async def test_a_sync_worker_outlasts_a_node_lagging_past_its_bulk_retries(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    """A node behind on the cluster state for longer than a bulk's retries (the defaults: 6
    retries, ~6–11 s) made the bulk's missing alias an IndexStateError, which the worker
    takes for a configuration error: it exited for good (every time). It backs off like on
    a backend error, and an alias the checks after it read missing (the same node) is gone
    only once it stays missing for ``ALIAS_GONE_S``."""
    client = clients.async_opensearch(ingest_settings)
    alias = ingest_settings.index_alias
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        bump(mongo_db[ingest_settings.items_collection], "p2", popularity=7.0)
        sent: list[str] = []

        checked: list[str] = []

        def lagging(method: str, path: str) -> bool:
            if "/_alias/" in path and sent:  # the checks after the refused bulks, twice
                checked.append(path)
                return len(checked) <= 2
            if not path.endswith("/_bulk"):
                return False
            sent.append(path)
            return len(sent) <= 4  # two passes' bulk and its one retry

        async with faulty_engine(
            ingest_settings, bulk_backoff_max=0.05, bulk_max_retries=1, sync_backoff_max=0.5
        ) as (proxy, settings, _):
            proxy.missing_if = lagging
            stop = asyncio.Event()
            worker = asyncio.create_task(run_sync(settings, stop=stop))
            try:
                for _ in range(150):
                    got = await client.get(index=alias, id="p2")
                    if got["_source"]["popularity"] == 7.0 or worker.done():
                        break
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await worker  # an exit on error raises here
        assert len(sent) > 4 and len(checked) > 2 and got["_source"]["popularity"] == 7.0
    finally:
        await client.close()


async def test_a_sync_worker_exits_once_the_alias_stays_gone(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alias missing for good (deleted) is still the configuration error the worker
    exits on, once it has read missing for ``ALIAS_GONE_S`` (1 s here)."""
    monkeypatch.setattr(run_sync_module, "ALIAS_GONE_S", 1.0)
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        bump(mongo_db[ingest_settings.items_collection], "p2", popularity=7.0)
        async with faulty_engine(
            ingest_settings, bulk_backoff_max=0.05, bulk_max_retries=1, sync_backoff_max=0.3
        ) as (proxy, settings, _):
            sent: list[str] = []

            def gone(method: str, path: str) -> bool:  # from the first bulk on
                if path.endswith("/_bulk"):
                    sent.append(path)
                return bool(sent) and (path.endswith("/_bulk") or "/_alias/" in path)

            proxy.missing_if = gone
            started = asyncio.get_running_loop().time()
            with pytest.raises(IndexStateError):
                await asyncio.wait_for(run_sync(settings), 30)
            assert asyncio.get_running_loop().time() - started >= 1.0
    finally:
        await client.close()
