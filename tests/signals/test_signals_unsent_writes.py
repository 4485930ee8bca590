"""A MongoDB write that failed because no server could be selected was never sent: it cannot
land later, so it is not fenced (``_store_fence.needs_fence``). Its fence waited out a second
server selection while the writer held its leases (a member's state: 2 s more in an API
worker, measured under a killed store). A chunked write cut after its first command was sent
is not taken for one never sent; a counter write never sent leaves no check of whether it
landed (the failing call gives its claims up without waiting out a selection for it), a sent
one does. The real store behind a cut proxy (``tests/tcp_faults.py``);
the writes held on their way and fenced: ``test_signals_late_writes``."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from pymongo import UpdateOne
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError
from tcp_faults import TcpProxy, command_on, store_proxy

from opendisco import Settings, StoreBackendError, StoreUnreachable, clients
from opendisco._store import MAX_WRITES_PER_COMMAND, bulk_write_chunked
from opendisco.signals import INBOUND, InboundCounter
from opendisco.signals._apply import _stored
from opendisco.signals._store_fence import FENCED, replace_fenced

#: the cut client's server selection timeout (and socket timeout)
SELECT_S = 1.0


@contextlib.asynccontextmanager
async def _through_proxy(settings: Settings) -> AsyncIterator[tuple[TcpProxy, Any]]:
    """A proxy in front of the store, and the test database through it."""
    proxy = await store_proxy(settings.mongo_url)
    ms = int(SELECT_S * 1000)
    url = proxy.mongo_url
    cut = clients.mongo_async(
        settings.model_copy(update={"mongo_url": url}),
        serverSelectionTimeoutMS=ms,
        socketTimeoutMS=ms,
    )
    try:
        yield proxy, cut[settings.mongo_db]
    finally:
        await proxy.close()
        await cut.close()


async def _cut(proxy: TcpProxy, db: Any) -> None:
    """Cut the store, and let the driver notice (its open connections fail a ping): its next
    operations wait for a server selection, which times out."""
    await proxy.kill()
    with pytest.raises(PyMongoError):
        await db.command("ping")


async def test_a_whole_document_write_never_sent_is_not_fenced(
    settings: Settings, async_db: Any
) -> None:
    name = f"test_unsent_{uuid.uuid4().hex[:8]}"
    try:
        async with _through_proxy(settings) as (proxy, db):
            await _cut(proxy, db)
            t0 = time.monotonic()
            with pytest.raises(StoreUnreachable):
                await replace_fenced(db[name], [{"_id": "m1", "v": 1}])
            took = time.monotonic() - t0
            assert took < 1.8 * SELECT_S, f"{took:.2f}s: a fence waited out a second selection"
        assert await async_db[name].count_documents({}) == 0  # neither written nor fenced
    finally:
        await async_db[name].drop()


class _CutAfterFirst:
    """A collection whose store is cut once its first ``bulk_write`` was answered."""

    def __init__(self, coll: Any, cut: Any) -> None:
        self.coll, self.cut, self.name, self.calls = coll, cut, coll.name, 0

    async def bulk_write(self, ops: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            await self.cut()
        return await self.coll.bulk_write(ops, **kw)


async def test_a_chunked_write_cut_after_its_first_command_is_not_taken_for_unsent(
    settings: Settings, async_db: Any
) -> None:
    name = f"test_unsent_{uuid.uuid4().hex[:8]}"
    ops = [
        UpdateOne({"_id": f"d{i}"}, {"$set": {"v": i}}, upsert=True)
        for i in range(MAX_WRITES_PER_COMMAND + 1)
    ]
    try:
        async with _through_proxy(settings) as (proxy, db):
            coll = _CutAfterFirst(db[name], partial(_cut, proxy, db))
            with pytest.raises(StoreBackendError) as caught:
                await bulk_write_chunked(coll, ops)
            assert not isinstance(caught.value, StoreUnreachable), caught.value
            assert isinstance(caught.value.__cause__, ServerSelectionTimeoutError)
        assert await async_db[name].count_documents({}) == MAX_WRITES_PER_COMMAND
        assert await async_db[name].count_documents({FENCED: {"$exists": True}}) == 0
    finally:
        await async_db[name].drop()


async def test_a_counter_write_leaves_a_check_of_whether_it_landed_only_when_it_was_sent(
    settings: Settings, async_db: Any
) -> None:
    item = f"unsent-{uuid.uuid4().hex[:8]}"

    async def check() -> bool:
        return False

    def add(counter: InboundCounter) -> Any:
        return counter.add([(item, datetime.now(UTC))], mark=uuid.uuid4().hex[:12])

    try:
        async with _through_proxy(settings) as (proxy, db):
            counter = InboundCounter(db)
            sent = {"inbound": check}
            proxy.hold_if = command_on("update", INBOUND)  # held past the socket timeout
            with pytest.raises(StoreBackendError) as caught:
                await _stored(add(counter), sent, "inbound")
            assert not isinstance(caught.value, StoreUnreachable)
            assert sent == {"inbound": check}  # sent: did it land? (fenced by the check)
            proxy.hold_if = None
            await _cut(proxy, db)
            unsent = {"inbound": check}
            with pytest.raises(StoreUnreachable):
                await _stored(add(counter), unsent, "inbound")
            assert unsent == {}
    finally:
        await async_db[INBOUND].delete_many({"_id": item})
