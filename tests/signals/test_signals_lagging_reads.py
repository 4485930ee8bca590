"""Reads a node behind on the cluster state answers 404 ``index_not_found_exception`` (one
resumed after a pause, or that has not applied a new index or alias yet: the fault proxy's
``missing_if``) are failed reads, not "nothing there": the items' own exposure caps, the
items an event batch is about, the process's copy of the counters and live trending."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from http_faults import FaultyHttpProxy
from signals_support import Clock, clustered_namespace

from opendisco import SearchBackendError, Settings, clients
from opendisco.serving._market import LiveTrending
from opendisco.signals import EventProcessor, ExposureMirror, ExposureStore, UserStateStore

CAPPED_ITEM = "cap0"  # exposure_cap 3: see conftest.clustered_catalogue


@pytest.fixture(scope="module")
def lag_settings(
    settings: Settings, os_client: Any, index_items: Any, clustered_items: list[dict[str, Any]]
) -> Iterator[Settings]:
    with clustered_namespace(settings, os_client, index_items, clustered_items, "lg") as s:
        yield s


@pytest.fixture
async def lagging(lag_settings: Settings) -> AsyncIterator[tuple[FaultyHttpProxy, Settings, Any]]:
    """The fault proxy, settings through it and an engine client of those."""
    with FaultyHttpProxy(lag_settings.opensearch_url) as proxy:
        s = lag_settings.model_copy(update={"opensearch_url": proxy.url})
        os_client = clients.async_opensearch(s)
        try:
            yield proxy, s, os_client
        finally:
            await os_client.close()


async def test_caps_a_lagging_node_says_have_no_items_index_fail_the_record(
    lagging: tuple[FaultyHttpProxy, Settings, Any],
) -> None:
    """The items' own caps read 404: every item was counted at the default cap (200), so
    one whose own cap (3) its impressions reached stayed off the cap list and was shown
    past it. The record fails before writing (its caller keeps the impressions)."""
    proxy, s, os_client = lagging
    store = ExposureStore(os_client, s)
    await store.ensure()
    before = (await store.counts([CAPPED_ITEM]))[CAPPED_ITEM]
    proxy.missing_if = lambda method, path: path.startswith(f"/{s.index_alias}/_search")
    with pytest.raises(SearchBackendError, match="exposure caps"):
        await store.record({CAPPED_ITEM: 3})
    assert proxy.answered.get(404, 0) >= 1
    assert (await store.counts([CAPPED_ITEM]))[CAPPED_ITEM] == before  # nothing written
    proxy.missing_if = None
    assert CAPPED_ITEM in await store.record({CAPPED_ITEM: 3})


async def test_an_event_batch_a_lagging_node_says_has_no_items_keeps_the_vectors(
    lagging: tuple[FaultyHttpProxy, Settings, Any],
) -> None:
    """The events' item lookup read 404: the items were taken for "not indexed", the
    member's earlier positives for items without vectors, and the member's vectors folded
    again from none (wiped, not marked stale). Now read as a failed lookup: the vectors are
    kept and marked stale (repaired by the next event or the recovery sweep)."""
    proxy, s, os_client = lagging
    mongo = clients.mongo_async(s)
    db = mongo[s.mongo_db]
    try:
        proc = EventProcessor(s, db, os_client)
        await proc.ensure()
        for item in ("alpha3", "alpha4"):
            doc = {"_id": item, "kind": "movie", "category": "alpha", "owner_id": "o3"}
            await db[s.items_collection].replace_one({"_id": item}, doc, upsert=True)
        user = f"m{uuid.uuid4().hex[:8]}"

        def like(item: str) -> dict[str, Any]:
            return {"id": uuid.uuid4().hex, "type": "like", "user_id": user, "item_id": item}

        assert (await proc.apply([like("alpha3")])).accepted == 1
        first = await UserStateStore(db).get(user)
        assert first.vector is not None and not first.vectors_stale
        proxy.missing_if = lambda method, path: path == f"/{s.index_alias}/_mget"
        assert (await proc.apply([like("alpha4")])).accepted == 1
        assert proxy.answered.get(404, 0) >= 1
        st = await UserStateStore(db).get(user)
        assert [p["id"] for p in st.positives] == ["alpha3", "alpha4"]
        assert st.vector == first.vector and st.vectors_stale
    finally:
        await mongo.close()


async def test_a_full_read_a_lagging_node_answers_keeps_the_copy(
    lagging: tuple[FaultyHttpProxy, Settings, Any],
) -> None:
    """The copy's full read (count, then pages) answered 404: read as no counters, it
    emptied the copy, and this process no longer knew the impressions it holds items back
    by between two flushes (``known``). The read fails; the copy keeps what it last read."""
    proxy, s, os_client = lagging
    store = ExposureStore(os_client, s)
    await store.ensure()
    item = f"lag-{uuid.uuid4().hex[:6]}"
    await store.record({item: 2})
    await os_client.indices.refresh(index=store.index)
    clock = Clock()
    mirror = ExposureMirror(store, every_s=1.0, max_items=10_000, full_every_s=60.0, clock=clock)
    await mirror.refresh()
    assert mirror.known().of(item) == 2
    proxy.missing_if = lambda method, path: path.startswith(f"/{store.index}/")
    clock.t += 60.0  # a full read is due
    with pytest.raises(SearchBackendError):
        await mirror.refresh()
    assert proxy.answered.get(404, 0) >= 1
    assert mirror.known().of(item) == 2


async def test_trending_a_lagging_node_answers_keeps_the_list(
    lagging: tuple[FaultyHttpProxy, Settings, Any],
) -> None:
    """Live trending's search answered 404: read as no trending items, the process's list
    was replaced by an empty one until its next refresh (the trending source empty). The
    refresh fails; the list read before is kept."""
    proxy, s, os_client = lagging
    store = ExposureStore(os_client, s)
    await store.ensure()
    item = f"lag-{uuid.uuid4().hex[:6]}"
    await store.record_trend([(item, datetime.now(UTC), 50.0)])
    await os_client.indices.refresh(index=store.index)
    live = LiveTrending(store, k=50, refresh_s=0.0)
    assert item in dict(await live.current())
    proxy.missing_if = lambda method, path: path.startswith(f"/{store.index}/")
    with pytest.raises(SearchBackendError):
        await store.trending(50)
    await live.current()  # starts a refresh
    assert live._task is not None
    with contextlib.suppress(SearchBackendError):
        await live._task
    assert proxy.answered.get(404, 0) >= 2
    assert item in dict(await live.current())
