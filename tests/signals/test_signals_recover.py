"""The events' recovery sweep on the real servers: a sweep (or the set-up before the first)
that fails in an unexpected way is logged, and neither ends the background loop (each API
process's only recovery until its restart) nor fails the batch of the call that triggered it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from opendisco import Settings, StoreBackendError, clients
from opendisco.signals import EventProcessor, EventsResult


@pytest.fixture
async def processor(settings: Settings) -> AsyncIterator[EventProcessor]:
    s = settings.model_copy(
        update={"mongo_db": f"{settings.mongo_db}rv", "events_recover_every_s": 0.05}
    )
    mongo = clients.mongo_async(s)
    os_client = clients.async_opensearch(s)
    try:
        proc = EventProcessor(s, mongo[s.mongo_db], os_client)
        await proc.ensure()
        yield proc
    finally:
        await mongo.drop_database(s.mongo_db)
        await mongo.close()
        await os_client.close()


def _failing_once(proc: EventProcessor) -> list[int]:
    """Make ``proc``'s first sweep raise a non-backend error (a bug); returns the call log."""
    calls: list[int] = []
    real = proc.sweep

    async def sweep() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("a bug in the sweep")
        await real()

    proc.sweep = sweep  # type: ignore[method-assign]
    return calls


async def test_background_sweep_survives_an_unexpected_error(processor: EventProcessor) -> None:
    calls = _failing_once(processor)
    task = asyncio.create_task(processor.recover_forever(first_s=0.0))
    try:
        for _ in range(100):
            if len(calls) >= 3 or task.done():
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception()
        assert len(calls) >= 3  # the sweeps after the failed one ran (on the real stores)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failed_sweep_is_tried_again_before_the_next_cadence(
    processor: EventProcessor,
) -> None:
    """The store is down when the process starts: its first sweeps fail. They used to be
    tried again only a whole ``events_recover_every_s`` (300 s) later, so what a killed
    process left claimed waited that long; now sooner, backing off from ``first_s``."""
    processor.settings = processor.settings.model_copy(update={"events_recover_every_s": 300.0})
    calls: list[int] = []

    async def sweep() -> None:
        calls.append(len(calls))
        if len(calls) <= 2:
            raise StoreBackendError("the store is not up yet")

    processor.sweep = sweep  # type: ignore[method-assign]
    task = asyncio.create_task(processor.recover_forever(first_s=0.05))
    try:
        for _ in range(200):
            if len(calls) >= 3 or task.done():
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception()
        assert len(calls) == 3  # two failures retried within a second, then the cadence
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failed_in_call_sweep_does_not_fail_the_batch(processor: EventProcessor) -> None:
    calls = _failing_once(processor)
    processor._last_recover = float("-inf")  # the call triggers a sweep
    res = await processor.apply([{"type": "like", "user_id": "u1"}])  # no item_id: rejected
    assert calls == [0]
    assert res.accepted == 0 and len(res.rejected) == 1


async def test_the_background_recovery_starts_after_a_failed_set_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opendisco.serving._writes import Writes
    from opendisco.signals import ExposureStore

    s = settings.model_copy(
        update={"mongo_db": f"{settings.mongo_db}rw", "events_recover_every_s": 0.05}
    )
    real_ensure = EventProcessor.ensure
    ensures: list[int] = []

    async def ensure(self: EventProcessor) -> None:
        ensures.append(len(ensures))
        if len(ensures) == 1:
            raise RuntimeError("a bug in the set-up")
        await real_ensure(self)

    monkeypatch.setattr(EventProcessor, "ensure", ensure)
    mongo = clients.mongo_async(s)
    os_client = clients.async_opensearch(s)
    writes = Writes(s, os_client, mongo[s.mongo_db], ExposureStore(os_client, s))
    task = asyncio.create_task(writes.recover_forever())
    try:
        for _ in range(100):
            if writes._events is not None or task.done():
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception()
        assert writes._events is not None and len(ensures) >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await mongo.drop_database(s.mongo_db)
        await mongo.close()
        await os_client.close()


async def test_expired_events_are_purged_by_the_sweep_and_never_in_a_clients_call(
    processor: EventProcessor,
) -> None:
    """Without TTL indexes (FerretDB) the expired events are deleted every ``purge_every_s``.
    The delete ran inside a client's ``apply`` (a scan: that call waited for it, and failed
    when it failed); the recovery sweep runs it now, and a sweep whose recovery fails still
    purges (one cancelled does not: a process stopping)."""
    if processor.native_ttl:
        pytest.skip("the store's TTL index expires the events")
    now = datetime.now(UTC)
    old = now - timedelta(days=processor.cfg.ttl_days + 1)
    docs = [{"_id": "old-1", "ts": old}, {"_id": "old-2", "ts": old}, {"_id": "new-1", "ts": now}]
    await processor.events.insert_many(docs)
    processor.cfg = processor.cfg.model_copy(update={"purge_every_s": 0.01})
    processor.settings = processor.settings.model_copy(update={"events_recover_every_s": 300.0})
    processor._last_recover = time.monotonic()  # no in-call sweep is due
    processor._last_purge = float("-inf")  # the purge is due
    res = await processor.apply([{"type": "like", "user_id": "u1"}])  # no item_id: rejected
    assert len(res.rejected) == 1
    ids = {d["_id"] async for d in processor.events.find({}, {"_id": 1})}
    assert {"old-1", "old-2", "new-1"} <= ids  # the call did not wait for a purge

    async def failing() -> EventsResult:
        raise StoreBackendError("a batch of the recovery failed")

    async def stalled() -> EventsResult:
        await asyncio.sleep(60)
        raise AssertionError("not cancelled")

    processor.recover_expired = stalled  # type: ignore[method-assign]
    sweep = asyncio.create_task(processor.sweep())
    await asyncio.sleep(0.1)
    sweep.cancel()  # a process stopping: its sweep does not start a purge to wait for
    with pytest.raises(asyncio.CancelledError):
        await sweep
    ids = {d["_id"] async for d in processor.events.find({}, {"_id": 1})}
    assert {"old-1", "old-2", "new-1"} <= ids

    processor.recover_expired = failing  # type: ignore[method-assign]
    with pytest.raises(StoreBackendError):
        await processor.sweep()
    ids = {d["_id"] async for d in processor.events.find({}, {"_id": 1})}
    assert "new-1" in ids and not {"old-1", "old-2"} & ids
