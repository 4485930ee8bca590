"""Reindex under faults: two rebuilds of one alias at once, a crash around the alias swap."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ingest_support import HeldBulkProxy, faulty_engine

import opendisco.ingest._reindex as reindex_module
from opendisco import IndexStateError, Settings, clients, index_templates, now_ms
from opendisco._holder import holder as this_host
from opendisco.ingest import (
    Embedder,
    alias_targets,
    reindex,
    sync_once,
    verify,
    versioned_indices,
)

LEASES = "reindex_leases"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_a_second_concurrent_reindex_is_refused_and_the_alias_survives(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """Two rebuilds at once with keep_versions=0 each deleted the other's index (the alias
    target) and both succeeded: the alias pointed at nothing. One is refused now."""
    ingest_settings = ingest_settings.model_copy(update={"keep_versions": 0})
    client = clients.async_opensearch(ingest_settings)
    try:
        results = await asyncio.gather(
            *(reindex(ingest_settings, client=client, embedder=embedder) for _ in range(2)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert len(refused) == 1 and len(done) == 1, results
        assert isinstance(refused[0], IndexStateError), refused
        assert "another reindex" in str(refused[0]) and str(os.getpid()) in str(refused[0])
        assert await alias_targets(client, ingest_settings.index_alias) == [done[0].index]
        indices = await versioned_indices(client, ingest_settings.index_alias)
        assert list(indices) == [done[0].index]
        assert (await verify(ingest_settings, client=client)).ok
        # the lease is released: the next run is not refused
        again = await reindex(ingest_settings, client=client, embedder=embedder)
        assert await alias_targets(client, ingest_settings.index_alias) == [again.index]
    finally:
        await client.close()


async def test_the_lease_of_a_killed_reindex_is_taken_over_a_live_one_refuses(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    leases = mongo_db[LEASES]
    alias = ingest_settings.index_alias
    now = datetime.now(UTC)
    holder = {"owner": "x", "started_at": now, "expires": now + timedelta(minutes=5)}
    client = clients.async_opensearch(ingest_settings)
    try:
        # a live holder on another host: refused, nothing built, nothing swapped
        leases.insert_one({"_id": alias, **holder, "pid": 1, "host": "elsewhere"})
        with pytest.raises(IndexStateError, match="pid 1 on elsewhere"):
            await reindex(ingest_settings, client=client, embedder=embedder)
        assert await versioned_indices(client, alias) == {}
        assert leases.find_one({"_id": alias})["owner"] == "x"
        # the same holder once its lease expired, then one killed with -9 on this host
        leases.update_one({"_id": alias}, {"$set": {"expires": now - timedelta(seconds=1)}})
        await reindex(ingest_settings, client=client, embedder=embedder)
        leases.insert_one(
            {"_id": alias, **holder, **this_host(), "pid": _dead_pid(), "started": None}
        )
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert await alias_targets(client, alias) == [report.index]
        assert leases.find_one({"_id": alias}) is None  # released
    finally:
        await client.close()


class Crash(RuntimeError):
    pass


async def test_a_crash_right_after_the_swap_loses_no_write_sync_sent_to_the_old_index(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reindex killed between its alias swap and its sync floor left sync nothing to
    replay: what a running sync had applied to the old index after the catch-up read past
    it stayed stale in the new one. The floor is saved as pending before the swap now."""
    settings = ingest_settings.model_copy(update={"sync_overlap_seconds": 0.0})
    coll = mongo_db[settings.items_collection]
    client = clients.async_opensearch(settings)
    real_swap = reindex_module.swap_alias

    def bump(doc_id: str, title: str) -> None:
        coll.update_one(
            {"_id": doc_id},
            {"$set": {"title": title, "updated_at": now_ms()}, "$inc": {"version": 1}},
        )

    async def swap_then_die(client: Any, alias: str, index: str) -> list[str]:
        # after the catch-up: a running sync applies two writes to the old index
        bump("p1", "Written after the catch-up: sailing")
        await asyncio.sleep(0.02)
        bump("p2", "Also after the catch-up: chess")
        await sync_once(settings, client=client, embedder=embedder)
        await real_swap(client, alias, index)
        raise Crash("killed right after the swap")

    try:
        await reindex(settings, client=client, embedder=embedder)
        await sync_once(settings, client=client, embedder=embedder)  # the first floor replayed
        monkeypatch.setattr(reindex_module, "swap_alias", swap_then_die)
        with pytest.raises(Crash):
            await reindex(settings, client=client, embedder=embedder)
        monkeypatch.undo()
        await sync_once(settings, client=client, embedder=embedder)
        check = await verify(settings, client=client)
        assert check.ok, check.summary()
        # the next reindex's floor supersedes the pending one; sync goes on as usual
        await reindex(settings, client=client, embedder=embedder)
        bump("p3", "After the next reindex")
        await sync_once(settings, client=client, embedder=embedder)
        check = await verify(settings, client=client)
        assert check.ok, check.summary()
    finally:
        await client.close()


async def test_a_complete_build_killed_before_its_swap_is_no_rollback_target(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reindex killed after marking its index complete and before swapping the alias left
    a complete index the alias never served; the next rebuild's retention counted it among
    ``keep_versions`` and deleted the older index the alias had served instead: no rollback
    target left that was ever served. Retention keeps the ``keep_versions`` newest indices
    the alias served now and deletes the orphan."""
    settings = ingest_settings.model_copy(update={"keep_versions": 1})
    alias = settings.index_alias
    client = clients.async_opensearch(settings)

    async def die(client: Any, alias: str, index: str) -> list[str]:
        raise Crash("killed after the complete mark, before the swap")

    try:
        served = await reindex(settings, client=client, embedder=embedder)
        monkeypatch.setattr(reindex_module, "swap_alias", die)
        with pytest.raises(Crash):
            await reindex(settings, client=client, embedder=embedder)
        monkeypatch.undo()
        states = await versioned_indices(client, alias)
        (orphan,) = set(states) - {served.index}
        assert states[orphan].get("state") == "complete"
        assert await alias_targets(client, alias) == [served.index]
        latest = await reindex(settings, client=client, embedder=embedder)
        assert latest.previous == [served.index] and orphan in latest.removed
        assert sorted(await versioned_indices(client, alias)) == [served.index, latest.index]
    finally:
        await client.close()


async def test_a_bulk_that_timed_out_but_landed_does_not_fail_the_build(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """A bulk whose answer was lost to a timeout (the engine stalled after applying it) is
    sent again and answered 409 for every document: the build counted them as not indexed,
    found more documents than acknowledged and threw the whole build away."""
    proxy = HeldBulkProxy(ingest_settings.opensearch_url, nth=2)
    await proxy.start()
    settings = ingest_settings.model_copy(
        update={
            "opensearch_url": proxy.url,
            "opensearch_timeout": 3.0,
            "bulk_batch_size": 20,
            "bulk_concurrency": 1,
        }
    )
    client = clients.async_opensearch(settings)

    async def stall() -> None:
        await proxy.held.wait()
        await asyncio.sleep(4.5)  # past the client's timeout: the bulk is sent again
        proxy.release()

    staller = asyncio.create_task(stall())
    try:
        report = await reindex(settings, client=client, embedder=embedder)
        assert proxy.held.is_set() and staller.done()
        assert report.indexed == len(ingest_catalogue) and report.conflicts == 0
        assert await alias_targets(client, settings.index_alias) == [report.index]
        assert (await verify(settings, client=client)).ok
    finally:
        staller.cancel()
        await client.close()
        await proxy.close()


def _first_bulk_of(doc_id: str) -> Any:
    """A ``lose_answer_if`` matching the first ``_bulk`` that carries ``doc_id``, once."""
    lost: list[bytes] = []

    def match(method: str, path: str, body: bytes) -> bool:
        if lost or not path.endswith("/_bulk") or f'"_id":"{doc_id}"'.encode() not in body:
            return False
        lost.append(body)
        return True

    return match


async def test_a_bulk_whose_connection_was_cut_after_it_landed_does_not_fail_the_build(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """The engine applied a bulk and the connection was cut before its answer: the client's
    transport sent it again by itself, every document came back 409, and the writer, which
    had not seen the resend, counted them as not indexed; the build then found 20 more
    documents than acknowledged and threw the whole rebuild away (every time)."""
    async with faulty_engine(ingest_settings, bulk_batch_size=20, bulk_concurrency=1) as (
        proxy,
        settings,
        client,
    ):
        proxy.lose_answer_if = _first_bulk_of("p5")
        report = await reindex(settings, client=client, embedder=embedder)
        assert proxy.lost == 1
        assert report.indexed == len(ingest_catalogue) and report.conflicts == 0
        assert await alias_targets(client, settings.index_alias) == [report.index]
        assert (await verify(settings, client=client)).ok


async def test_an_item_refused_on_the_resend_of_a_landed_bulk_counts_as_indexed(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """The resend of a bulk whose answer was lost had one item refused 429 (a full write
    queue); that item, already applied by the lost attempt, was sent alone again, answered
    409 and counted as not indexed: the build failed its count check (every time)."""
    refused: list[str] = []

    def once(index: str, doc_id: str) -> bool:
        if doc_id != "p5" or refused or not proxy.lost:
            return False
        refused.append(doc_id)
        return True

    async with faulty_engine(ingest_settings, bulk_batch_size=20, bulk_concurrency=1) as (
        proxy,
        settings,
        client,
    ):
        proxy.lose_answer_if = _first_bulk_of("p5")
        proxy.reject_item = once
        report = await reindex(settings, client=client, embedder=embedder)
        assert proxy.lost == 1 and refused == ["p5"]
        assert report.indexed == len(ingest_catalogue) and report.conflicts == 0
        assert await alias_targets(client, settings.index_alias) == [report.index]


async def test_a_build_left_by_a_reindex_killed_on_another_host_is_cleaned_up(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """A reindex killed -9 in another container (another host name), or whose pid the
    kernel has given to a live process since, left its partial index "building": the next
    rebuilds kept it for ``STALE_BUILD`` (6 h) because its builder could not be known to be
    gone, though they held the alias's rebuild lease, which no running build lacks."""
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        body = index_templates.render("items", ingest_settings)
        orphans = {
            f"{ingest_settings.index_alias}-v19990101000000000000": "another-container",
            f"{ingest_settings.index_alias}-v19990101000000000001": socket.gethostname(),
        }
        for name, host in orphans.items():
            started = datetime.now(UTC).isoformat()
            meta = {"state": "building", "pid": os.getppid(), "host": host, "started_at": started}
            body["mappings"]["_meta"] = {"opendisco": meta}
            await client.indices.create(index=name, body=body)
        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert set(orphans) <= set(report.removed)
        left = await versioned_indices(client, ingest_settings.index_alias)
        assert not set(orphans) & set(left)
        assert all(m.get("state") == "complete" for m in left.values())
        assert await alias_targets(client, ingest_settings.index_alias) == [report.index]
    finally:
        await client.close()


async def test_a_build_index_created_by_a_lost_answer_does_not_fail_the_build(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """The engine created the new index and the connection was cut before its answer: the
    transport sent the create again, the engine answered ``resource_already_exists_exception``
    and the rebuild failed at its first step (every time)."""
    created: list[str] = []

    def create(method: str, path: str, body: bytes) -> bool:
        name = path.strip("/")
        if created or method != "PUT" or not name.startswith(f"{ingest_settings.index_alias}-v"):
            return False
        created.append(name)
        return True

    async with faulty_engine(ingest_settings) as (proxy, settings, client):
        proxy.lose_answer_if = create
        report = await reindex(settings, client=client, embedder=embedder)
        assert created == [report.index] and proxy.lost == 1
        assert await alias_targets(client, settings.index_alias) == [report.index]
        assert (await verify(settings, client=client)).ok


async def test_a_build_rides_out_a_429_storm_on_its_bulks(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """An engine answering every bulk 429 for a few seconds (its write queue full) made a
    rebuild give up after ``bulk_max_retries`` quick retries (about 3 s with the defaults)
    and throw away all it had built, every time; a rebuild keeps backing off for
    ``reindex_retry_seconds`` now (a sync worker keeps failing the pass and backing off)."""
    storm: list[float] = []

    def bulks(method: str, path: str) -> bool:
        if not path.endswith("/_bulk"):
            return False
        storm.append(time.monotonic())
        return len(storm) > 2 and storm[-1] - storm[2] < 5.0  # from the third bulk, for 5 s

    async with faulty_engine(
        ingest_settings,
        bulk_batch_size=20,
        bulk_max_retries=2,
        bulk_backoff_max=0.5,
        reindex_retry_seconds=60.0,
    ) as (proxy, settings, client):
        proxy.fail_if = bulks
        report = await reindex(settings, client=client, embedder=embedder)
        assert proxy.answered.get(429, 0) > 3 and storm[-1] - storm[2] >= 5.0
        assert report.indexed == len(ingest_catalogue)
        assert await alias_targets(client, settings.index_alias) == [report.index]


async def test_a_build_rides_out_a_429_storm_after_its_bulks(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """An engine answering everything 429 for 3 s from the moment the build was complete
    (refresh turned back on, then refresh, count, mapping, alias swap) failed the rebuild
    at its first call and threw the complete build away (every time)."""
    storm: list[float] = []

    def everything(method: str, path: str) -> bool:
        if not storm and method == "PUT" and path.endswith("/_settings"):
            storm.append(time.monotonic())
        return bool(storm) and time.monotonic() - storm[0] < 3.0

    async with faulty_engine(ingest_settings, bulk_backoff_max=0.5) as (proxy, settings, client):
        proxy.fail_if = everything
        report = await reindex(settings, client=client, embedder=embedder)
        assert storm and proxy.answered.get(429, 0) > 2
        assert report.indexed == len(ingest_catalogue)
        assert await alias_targets(client, settings.index_alias) == [report.index]


async def test_a_rebuild_started_in_a_429_storm_waits_it_out(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """A rebuild started while the engine answered everything 429 failed at its first call
    (the cleanup of partial builds, then the create): the storm cost nothing built yet, but
    the rebuild did not run (every time)."""
    storm: list[float] = []

    def everything(method: str, path: str) -> bool:
        storm.append(time.monotonic())
        return storm[-1] - storm[0] < 2.0

    async with faulty_engine(ingest_settings, bulk_backoff_max=0.5) as (proxy, settings, client):
        proxy.fail_if = everything
        report = await reindex(settings, client=client, embedder=embedder)
        assert proxy.answered.get(429, 0) > 2
        assert report.indexed == len(ingest_catalogue)
        assert await alias_targets(client, settings.index_alias) == [report.index]


async def test_a_rebuild_asked_about_its_index_by_a_lagging_node_retries(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """A node behind on the cluster state (one resumed after a pause answers from the state
    it had) answers that the index the rebuild just created does not exist: the refresh
    after the build failed with a 404 and the rebuild threw the complete build away (seen on
    the 3-node cluster right after a hung node came back). Such answers about its own index
    are retried like a storm's."""
    asked: list[str] = []

    def lagging(method: str, path: str) -> bool:
        if not path.endswith("/_refresh"):
            return False
        asked.append(path)
        return len(asked) <= 2  # the first two refreshes (after the build)

    async with faulty_engine(ingest_settings, bulk_backoff_max=0.2) as (proxy, settings, client):
        proxy.missing_if = lagging
        report = await reindex(settings, client=client, embedder=embedder)
        assert len(asked) > 2  # the two lagging answers were asked again
        assert report.indexed == len(ingest_catalogue)
        assert await alias_targets(client, settings.index_alias) == [report.index]
