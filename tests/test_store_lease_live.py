"""``opendisco._store.lease`` on the real store: a holder working past ``lease_s`` keeps its
lease (renewed while held) — before, a second writer took it over once it expired and both
read-modified-wrote the same documents (a member's state, blocks: the last write undid the
other's) — a released lease is free at once, and so is one whose holder was killed, or whose
release failed (the store cut) once the store answers again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from tcp_faults import store_proxy

from opendisco import Settings, StoreBackendError, clients
from opendisco._store import lease


async def test_a_lease_held_past_its_term_is_not_taken_over(async_db: Any) -> None:
    locks = async_db["test_lease_locks"]
    ids = [f"u-{uuid.uuid4().hex[:8]}"]
    # a term long enough that a renewal round (renewed every lease_s / 3) cannot miss it on a
    # loaded machine: at 0.3 s a store update and event-loop delay past 0.2 s let the
    # second holder take the lease over (1 run in 11 with the CPU busy)
    async with lease(locks, ids, lease_s=1.5, wait_s=1.0, what="t"):
        await asyncio.sleep(4.5)  # three terms of work
        with pytest.raises(StoreBackendError, match="busy"):
            async with lease(locks, ids, lease_s=1.5, wait_s=1.0, what="t"):
                pass
    async with lease(locks, ids, lease_s=1.5, wait_s=0.1, what="t"):  # released: free
        pass
    assert await locks.count_documents({"_id": {"$in": ids}}) == 0


_HOLDER = """
import asyncio, sys
from pymongo import AsyncMongoClient
from opendisco._store import lease

async def main():
    locks = AsyncMongoClient(sys.argv[1])[sys.argv[2]]["test_lease_locks"]
    async with lease(locks, sys.argv[3:], lease_s=60, wait_s=5, what="t"):
        print("held", flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_lease_of_a_killed_holder_is_taken_over_at_once(
    async_db: Any, settings: Settings
) -> None:
    # a process killed with -9 (an API worker applying events) left its leases for lease_s
    # (60 s for graph rows): every writer of those items waited them out, and the events
    # recovery sweep after the restart gave up (30 s) and waited for its next cadence (300 s)
    locks = async_db["test_lease_locks"]
    ids = [f"k-{uuid.uuid4().hex[:8]}", f"k-{uuid.uuid4().hex[:8]}"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, settings.mongo_url, settings.mongo_db, *ids],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    finally:
        proc.kill()
        proc.wait()
    assert await locks.count_documents({"_id": {"$in": ids}}) == 2  # left behind
    t0 = time.monotonic()
    async with lease(locks, ids, lease_s=60, wait_s=3.0, what="t"):
        assert time.monotonic() - t0 < 2.0
    assert await locks.count_documents({"_id": {"$in": ids}}) == 0


async def test_a_lease_whose_release_failed_is_free_once_the_store_answers(
    async_db: Any, settings: Settings
) -> None:
    # the store cut (kill -9, a failover) as a holder gave its leases up: the release failed
    # and the leases held every writer of those ids off for lease_s (60 s for graph rows: an
    # event batch applied ~50 s after the store was back, test_api_events_concurrent[killed])
    locks = async_db["test_lease_locks"]
    ids = [f"r-{uuid.uuid4().hex[:8]}"]
    proxy = await store_proxy(settings.mongo_url)
    cut = clients.mongo_async(
        settings.model_copy(update={"mongo_url": proxy.mongo_url}), serverSelectionTimeoutMS=500
    )
    try:
        async with lease(cut[settings.mongo_db][locks.name], ids, lease_s=60, wait_s=1, what="t"):
            await proxy.kill()
        assert await locks.count_documents({"_id": {"$in": ids}}) == 1  # left behind
        await proxy.resume()
        t0 = time.monotonic()
        async with lease(locks, ids, lease_s=60, wait_s=5.0, what="t"):
            assert time.monotonic() - t0 < 4.0
        assert await locks.count_documents({"_id": {"$in": ids}}) == 0
    finally:
        await proxy.close()
        await cut.close()
