"""A process's copy of the exposure counters (``ExposureMirror``) on the real engine: it reads
what the engine reads, picks up other writers' changes by ``touched_at``, catches untimed
documents on its full read, and falls back to the engine when it has no fresh copy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from http_faults import FaultyHttpProxy
from signals_support import Clock, empty_items

from opendisco import SearchBackendError, Settings, clients
from opendisco.signals import ExposureMirror, ExposureStore
from opendisco.signals._exposure_mirror import scan_counters


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[ExposureStore]:
    s = settings.model_copy(update={"index_alias": f"{settings.index_alias}-mirror"})
    os_client = clients.async_opensearch(s)
    items = await empty_items(os_client, s.index_alias)
    st = ExposureStore(os_client, s)
    await st.ensure()
    try:
        yield st
    finally:
        await os_client.indices.delete(index=[st.index, items], ignore_unavailable=True)
        await os_client.close()


async def _visible(store: ExposureStore) -> None:
    await store.client.indices.refresh(index=store.index)


async def test_the_copy_reads_what_the_engine_reads(store: ExposureStore) -> None:
    await store.record({"a": 3, "b": 1})
    await store.record_trend([("c", datetime.now(UTC), 1.0), ("a", datetime.now(UTC), 2.0)])
    await _visible(store)
    clock = Clock()
    mirror = ExposureMirror(store, every_s=1.0, max_items=100, clock=clock)
    assert not mirror.fresh()
    await mirror.refresh()
    assert mirror.fresh() and mirror.items == 3
    now = datetime.now(UTC)
    ids = ["a", "b", "c", "never-seen"]
    engine = await store.read(ids, now, realtime=False)
    assert await mirror.read(ids, now) == engine
    assert engine["a"].count == 3 and engine["a"].trend > 1.9 and engine["never-seen"].count == 0
    later = datetime.fromtimestamp(now.timestamp() + 30 * 3600, UTC)  # past the 24 h window
    assert await mirror.read(ids, later) == await store.read(ids, later, realtime=False)


async def test_other_writers_changes_arrive_and_the_full_read_catches_untimed_ones(
    store: ExposureStore,
) -> None:
    clock = Clock()
    mirror = ExposureMirror(store, every_s=1.0, max_items=100, full_every_s=60.0, clock=clock)
    await store.record({"a": 1})
    await _visible(store)
    await mirror.refresh()  # the first read is a full one
    other = ExposureStore(store.client, store.settings)  # another process's store
    other.index = store.index
    await other.record({"a": 2, "d": 4})
    # a counter written by older code, without touched_at: only a full read sees it
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    await store.client.index(
        index=store.index, id="old", body={"item_id": "old", "count": 5, "window_start": now_ms}
    )
    await _visible(store)
    clock.t += 1.0
    await mirror.refresh()  # what changed since the last read
    got = await mirror.read(["a", "d", "old"])
    assert (got["a"].count, got["d"].count, got["old"].count) == (3, 4, 0)
    clock.t += 60.0
    await mirror.refresh()  # full
    assert (await mirror.read(["old"]))["old"].count == 5


async def test_a_stale_or_absent_copy_reads_the_engine(store: ExposureStore) -> None:
    clock = Clock()
    mirror = ExposureMirror(store, every_s=1.0, max_items=100, clock=clock)
    await store.record({"a": 1})
    await _visible(store)
    assert (await mirror.read(["a"]))["a"].count == 1  # no copy yet: the engine's
    await mirror.refresh()
    await store.record({"a": 1})
    await _visible(store)
    assert (await mirror.read(["a"]))["a"].count == 1  # fresh copy, not yet refreshed
    clock.t += mirror.stale_s + 0.1
    assert not mirror.fresh()
    assert (await mirror.read(["a"]))["a"].count == 2  # stale: the engine's


async def test_too_many_counters_keep_no_copy(store: ExposureStore) -> None:
    await store.record({"a": 1, "b": 1, "c": 1})
    await _visible(store)
    mirror = ExposureMirror(store, every_s=1.0, max_items=2, clock=Clock())
    await mirror.refresh()
    assert mirror.items is None and not mirror.fresh()
    await store.record({"a": 1})
    await _visible(store)
    assert (await mirror.read(["a"]))["a"].count == 2


async def test_the_loop_outlives_an_engine_it_cannot_reach(
    store: ExposureStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.record({"a": 1})
    await _visible(store)
    dead = clients.async_opensearch(
        store.settings.model_copy(
            update={"opensearch_url": "http://127.0.0.1:9", "opensearch_timeout": 0.5}
        )
    )
    real, store.client = store.client, dead
    mirror = ExposureMirror(store, every_s=0.05, max_items=100)
    task = asyncio.create_task(mirror.run())
    try:
        with caplog.at_level(logging.INFO, logger="opendisco.signals"):

            def warned() -> list[logging.LogRecord]:  # the copy's own (other tasks' aside)
                return [
                    r
                    for r in caplog.records
                    if r.module in ("_copies", "_exposure_mirror") and r.levelno >= 30
                ]

            for _ in range(100):  # the first failed attempt warns (a loaded host may be slow)
                if warned():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # ... and ten more attempts at every_s=0.05 do not
        assert mirror.items is None and not task.done()
        assert len(warned()) == 1, warned()  # once per outage, not once per attempt
        store.client = real
        for _ in range(200):
            if mirror.items is not None:
                break
            await asyncio.sleep(0.05)
        assert mirror.items == 1 and mirror.fresh()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dead.close()


async def test_reads_page_through_every_counter(store: ExposureStore) -> None:
    await store.record({f"i{n}": n + 1 for n in range(7)})
    await _visible(store)
    rows = await scan_counters(store, page=2)
    assert rows is not None and sorted(rows) == [f"i{n}" for n in range(7)]
    assert await scan_counters(store, page=2, limit=6) is None


async def test_a_count_missing_a_shard_fails_the_read_not_the_limit(store: ExposureStore) -> None:
    """The count that guards ``limit`` is a 200 whose ``_shards.failed`` is 1 (a shard's
    search queue full), its count short: read as the whole count, it let the scan hold every
    counter past ``signal_copies_max_items`` (7 rows under a limit of 6). The read fails
    instead, as when the count is refused (the copy keeps what it last read)."""
    await store.record({f"i{n}": n + 1 for n in range(7)})
    await _visible(store)
    shards = {"total": 2, "successful": 1, "skipped": 0, "failed": 1}
    with FaultyHttpProxy(store.settings.opensearch_url) as proxy:
        proxy.rewrite_if = lambda m, path, a: (
            {**a, "count": 3, "_shards": shards} if path.endswith("/_count") else None
        )
        faulty = clients.async_opensearch(
            store.settings.model_copy(update={"opensearch_url": proxy.url})
        )
        try:
            with pytest.raises(SearchBackendError, match="shards failed"):
                await scan_counters(ExposureStore(faulty, store.settings), page=2, limit=6)
            assert proxy.rewritten == 1
        finally:
            await faulty.close()


async def test_a_flush_the_engine_wrote_late_is_still_known(store: ExposureStore) -> None:
    """The engine took a flush's write seconds after the flush began (the writer's
    connection held; a full write queue does the same) while it kept answering the copy's
    reads. The counter's ``touched_at`` was the flush's start, older than any later read's
    overlap: the copy never read the new count, and once the write was ``visible_s`` old this
    process no longer knew its own impression (known 0, counted 1) — an item at its cap was
    shown again."""
    from urllib.parse import urlsplit

    from tcp_faults import TcpProxy

    from opendisco.signals import ServedExposure

    target = urlsplit(store.settings.opensearch_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    await proxy.start()
    slow = clients.async_opensearch(store.settings.model_copy(update={"opensearch_url": proxy.url}))
    clock = Clock()
    served = ServedExposure(ExposureStore(slow, store.settings), 3600.0, clock=clock)
    mirror = ExposureMirror(store, every_s=0.5, max_items=100, served=served)
    try:
        await mirror.refresh()
        served.add(["late"])
        proxy.pause()  # the flush's write waits; the copy's reads are answered
        flush = asyncio.ensure_future(served.flush(pace=False))
        for _ in range(9):
            await asyncio.sleep(0.5)
            await mirror.refresh()
        await proxy.resume()
        await flush
        assert (await store.counts(["late"]))["late"] == 1  # written, late
        for _ in range(10):  # reads after the write became visible, ``visible_s`` and on
            await asyncio.sleep(0.5)
            clock.t += 0.5
            await mirror.refresh()
        assert mirror.known().of("late") == 1
    finally:
        await proxy.close()
        await slow.close()
