"""A process's first counter write ensures the counters index: a served-list flush can come
before any request of the process ensured it (started while the engine was down, its
degraded answers served from the fallback's lists), and a write into a missing index
creates it with dynamic mappings wherever the cluster auto-creates indices (OpenSearch's
default; ours is off, so the write was refused instead)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from signals_support import clustered_namespace
from tcp_faults import TcpProxy

from opendisco import SearchBackendError, Settings, clients
from opendisco.signals import ExposureStore, ServedExposure
from opendisco.signals._counters_index import MAPPING
from opendisco.signals._exposure import CAPPED_DOC_ID, exposure_index

CAPPED_ITEM = "cap0"  # exposure_cap 3: see conftest.clustered_catalogue


@pytest.fixture(scope="module")
def fresh(
    settings: Settings, os_client: Any, index_items: Any, clustered_items: list[dict[str, Any]]
) -> Iterator[Settings]:
    with clustered_namespace(settings, os_client, index_items, clustered_items, "fw") as s:
        yield s


def _mapped(os_client: Any, s: Settings) -> dict[str, Any]:
    index = exposure_index(s)
    return next(iter(os_client.indices.get_mapping(index=index).values()))["mappings"]


async def test_the_first_flush_of_a_process_creates_the_counters_index_with_its_mapping(
    fresh: Settings, os_client: Any
) -> None:
    os_client.indices.delete(index=exposure_index(fresh), ignore_unavailable=True)
    engine = clients.async_opensearch(fresh)
    try:
        served = ServedExposure(ExposureStore(engine, fresh), flush_s=60)
        served.add([CAPPED_ITEM] * 3)
        assert CAPPED_ITEM in await served.flush(pace=False)
        assert served.written == 3 and not served.retry
    finally:
        await engine.close()
    mapped = _mapped(os_client, fresh)
    assert mapped["dynamic"] == "strict"  # dynamic mappings would not say so
    assert set(MAPPING["mappings"]["properties"]) <= set(mapped["properties"])
    assert os_client.get(index=exposure_index(fresh), id=CAPPED_DOC_ID)["found"]


async def test_a_sweep_before_any_write_creates_the_index_too(
    fresh: Settings, os_client: Any
) -> None:
    os_client.indices.delete(index=exposure_index(fresh), ignore_unavailable=True)
    engine = clients.async_opensearch(fresh)
    try:
        assert await ExposureStore(engine, fresh).sweep() == []
    finally:
        await engine.close()
    assert set(MAPPING["mappings"]["properties"]) <= set(_mapped(os_client, fresh)["properties"])


@contextlib.asynccontextmanager
async def _paused_engine(
    fresh: Settings, timeout_s: float
) -> AsyncIterator[tuple[TcpProxy, ExposureStore]]:
    """A store of ``fresh`` whose engine traffic goes through a TCP proxy, paused."""
    target = urlsplit(fresh.opensearch_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    await proxy.start()
    s = fresh.model_copy(update={"opensearch_url": proxy.url, "opensearch_timeout": timeout_s})
    engine = clients.async_opensearch(s)
    try:
        proxy.pause()
        yield proxy, ExposureStore(engine, s)
    finally:
        await engine.close()
        await proxy.close()


async def test_callers_waiting_on_an_engine_outage_share_one_attempt(fresh: Settings) -> None:
    """Pages, event batches and flushes all ensure the index before their first write; in an
    outage behind a lock each waiter tried again in turn when the one before failed: four
    callers failed after 1, 2, 3 and 4 timeouts (the tenth would wait ten). Now they share
    one attempt and its failure; the next call tries again."""
    async with _paused_engine(fresh, timeout_s=1.5) as (proxy, store):
        t0 = time.monotonic()

        async def one() -> float:
            with pytest.raises(SearchBackendError):
                await store.ensure_once()
            return time.monotonic() - t0

        took = await asyncio.gather(*(one() for _ in range(4)))
        assert max(took) - min(took) < 1.0, took  # one attempt's failure, not four in turn
        await proxy.resume()
        await store.ensure_once()  # tried again, and done
        assert store.ready


async def test_an_attempt_whose_caller_is_cancelled_ends_with_it(fresh: Settings) -> None:
    """The attempt runs in its caller's task (a shared task of its own outlived callers cut
    short by their deadline, against an engine that never answers): cancelled, it ends
    there, and the callers waiting on it fail as on a backend error, at once."""
    async with _paused_engine(fresh, timeout_s=30.0) as (proxy, store):
        first = asyncio.ensure_future(store.ensure_once())
        await asyncio.sleep(0.2)
        waiter = asyncio.ensure_future(store.ensure_once())
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        first.cancel()
        with pytest.raises(SearchBackendError, match="ensure cancelled"):
            await waiter
        assert time.monotonic() - t0 < 2.0
        assert first.cancelled()
        await proxy.resume()
        await store.ensure_once()
        assert store.ready
