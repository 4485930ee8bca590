"""The served-list log's spool under the faults its first tests did not cover, on the real
store (a TCP proxy in front of the shared FerretDB, the server itself never touched): a store
paused at shutdown, a spool that cannot write, a list that cannot be encoded."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from served_lists import served_list, until
from tcp_faults import command_on, store_proxy

from opendisco import Settings, clients
from opendisco.signals import SERVED_LISTS, ServedLog, ServedSpool, spool_dir


async def _ids(db: Any) -> set[str]:
    return {d["_id"] async for d in db[SERVED_LISTS].find({}, {"_id": 1})}


@contextlib.asynccontextmanager
async def _proxied_log(s: Settings, **kw: Any) -> AsyncIterator[tuple[Any, ServedLog]]:
    """A served-list log (a flush every 50 ms) with its spool, writing through a TCP proxy of
    the store: ``(proxy, log)``; the proxy and the client closed at the end."""
    proxy = await store_proxy(s.mongo_url)
    mongo = clients.mongo_async(s.model_copy(update={"mongo_url": proxy.mongo_url}))
    try:
        log = ServedLog(mongo[s.mongo_db], flush_every_s=0.05, **kw)
        log.attach_spool(ServedSpool.for_settings(s))
        yield proxy, log
    finally:
        await proxy.close()
        await mongo.close()


async def test_a_drain_cut_short_by_a_paused_store_spools_what_it_held(
    spooled: tuple[Settings, Any],
) -> None:
    """The store paused (connections open, no byte moves) just before shutdown: the flusher's
    write hangs until the socket timeout, past the app's wait on the drain, which cancels it.
    Before, the batch in flight and the lists queued behind it were lost, uncounted (the
    drain never reached its spilling); now the cancelled drain spools them and the next
    process writes every one."""
    s, db = spooled
    async with _proxied_log(s) as (proxy, log):
        log.log(served_list("before"))
        await until(lambda: log.written == 1)
        proxy.pause()
        for j in range(4):  # their write hangs (no failure yet: no spooling)
            log.log(served_list(f"paused-{j}"))
        await asyncio.sleep(0.3)
        for j in range(4, 8):  # queued behind it
            log.log(served_list(f"paused-{j}"))
        with pytest.raises(TimeoutError):  # the app gives the drain 5 s
            await asyncio.wait_for(log.drain(), 1.0)
        assert (log.spooled, log.dropped, log.pending) == (8, 0, 0)
        log.close_spool()

    direct = clients.mongo_async(s)
    try:
        again = ServedLog(direct[s.mongo_db], flush_every_s=0.05)
        again.attach_spool(ServedSpool.for_settings(s))  # the next process here
        await until(lambda: again.written + again.duplicates == 8)
        assert await _ids(db) == {"before", *(f"paused-{j}" for j in range(8))}
        await again.drain()
        again.close_spool()
    finally:
        await direct.close()


async def test_a_spool_that_cannot_write_does_not_stop_the_log_after_the_outage(
    spooled: tuple[Settings, Any],
) -> None:
    """The spool's directory removed under the process (an unwritable or full disk likewise),
    then a store outage: the lists of the outage cannot be spooled (dropped, counted). Before,
    the log stayed in its "writes fail" state for good — nothing spooled, so no write-back
    probed the store — and every later list was dropped though the store was back; now a
    list is queued when nothing is spooled, and its write finds the store."""
    s, db = spooled
    async with _proxied_log(s) as (proxy, log):
        log.log(served_list("before"))
        await until(lambda: log.written == 1)
        shutil.rmtree(spool_dir(s))
        await proxy.kill()
        log.log(served_list("down-0"))
        await until(lambda: log.failed > 0)
        log.log(served_list("down-1"))  # queued: nothing spooled, its write probes the store
        assert log.dropped == 1 and log.spooled == 0
        await proxy.resume()
        for j in range(3):
            log.log(served_list(f"after-{j}"))
        await until(lambda: log.written == 5)
        assert await _ids(db) == {"before", "down-1", "after-0", "after-1", "after-2"}
        await asyncio.wait_for(log.drain(), 20)
        log.close_spool()


async def test_a_list_that_cannot_be_encoded_is_dropped_not_raised_nor_retried(
    spooled: tuple[Settings, Any],
) -> None:
    """A list holding a lone surrogate (no UTF-8: BSON cannot encode it). Without a spool,
    the driver's UnicodeEncodeError failed its batch on every retry: the lists behind it were
    never written. While writes fail, with a spool, it raised out of :meth:`ServedLog.log`
    (the request's answer a 500) and, in the flusher's spill, ended the flusher with its batch
    lost. Now it is dropped and counted, and the others are written."""
    s, db = spooled
    bad = replace(served_list("bad"), user_id="u\ud800")
    proxy = await store_proxy(s.mongo_url)
    mongo = clients.mongo_async(s.model_copy(update={"mongo_url": proxy.mongo_url}))
    try:
        log = ServedLog(mongo[s.mongo_db], flush_every_s=0.05)
        for rid in ("a", "bad", "b"):
            log.log(bad if rid == "bad" else served_list(rid))
        await until(lambda: log.written == 2 and log.dropped == 1)

        log.attach_spool(ServedSpool.for_settings(s))
        await proxy.kill()
        log.log(served_list("c"))
        log.log(replace(bad, request_id="bad-2"))  # in the batch whose write fails
        log.log(served_list("d"))
        await until(lambda: log.failed > 0)
        log.log(replace(bad, request_id="bad-3"))  # on the hot path: spooled at once
        log.log(served_list("e"))
        assert (log.spooled, log.dropped) == (3, 3)
        await proxy.resume()
        await until(lambda: log.written == 5)
        assert await _ids(db) == {"a", "b", "c", "d", "e"}
        await asyncio.wait_for(log.drain(), 20)
        log.close_spool()
    finally:
        await proxy.close()
        await mongo.close()


async def test_the_queue_bound_drops_nothing_while_a_write_hangs(
    spooled: tuple[Settings, Any],
) -> None:
    """The store paused (gone silent): its first write hangs until the socket timeout, no
    write has failed yet, and the lists logged meanwhile fill the queue. Before, what
    overflowed it was dropped though a spool was there; now it is spooled, and written back
    with the rest once the store answers."""
    s, db = spooled
    async with _proxied_log(s, max_queue=3) as (proxy, log):
        log.log(served_list("before"))
        await until(lambda: log.written == 1)
        proxy.pause()
        log.log(served_list("silent-0"))
        await asyncio.sleep(0.3)  # its write hangs
        for j in range(1, 10):  # 3 queued, 6 over the bound
            log.log(served_list(f"silent-{j}"))
        assert (log.pending, log.spooled, log.dropped) == (3, 6, 0)
        await proxy.resume()
        await until(lambda: log.written == 11 and not log.spool.pending)  # type: ignore[union-attr]
        assert await _ids(db) == {"before", *(f"silent-{j}" for j in range(10))}
        await asyncio.wait_for(log.drain(), 20)
        log.close_spool()


async def test_lists_logged_on_a_silent_store_are_spooled_within_the_write_timeout(
    spooled: tuple[Settings, Any],
) -> None:
    """The store paused (gone silent, no reset): its first write hung until the driver's
    socket timeout (10 s in the API, 300 s here) while the lists logged meanwhile waited in
    memory — the chaos soak's kill -9 in that window lost 119 of them. Now a write unanswered
    after ``write_timeout_s`` has failed: the batch and the queue behind it are spooled, and
    every later list as it is logged."""
    s, db = spooled
    async with _proxied_log(s, write_timeout_s=1.0) as (proxy, log):
        log.log(served_list("before"))
        await until(lambda: log.written == 1)
        proxy.pause()
        t = time.monotonic()
        for j in range(5):
            log.log(served_list(f"silent-{j}"))
        await until(lambda: log.spooled == 5 and log.pending == 0, timeout=20)
        assert time.monotonic() - t < 5.0  # one write timeout, not the socket's
        log.log(served_list("silent-5"))  # the store still silent: spooled at once
        assert log.spooled == 6
        await proxy.resume()  # the timed-out write, held by the silent store, lands now too:
        await until(lambda: not log.spool.pending)  # type: ignore[union-attr]
        assert await _ids(db) == {"before", *(f"silent-{j}" for j in range(6))}
        assert log.written - 1 + log.duplicates == 6  # each spooled list stored once
        await asyncio.wait_for(log.drain(), 20)
        log.close_spool()


async def test_a_purge_held_by_the_store_does_not_hold_the_lists_logged_behind_it(
    spooled: tuple[Settings, Any],
) -> None:
    """Where the store has no TTL index (FerretDB, which the suite runs) the flusher deletes
    expired lists itself every ``purge_every_s``. That delete is no write of lists and had no
    write timeout: a store gone silent under it held the flusher until the socket timeout
    (300 s here, 10 s in the API), the lists logged meanwhile in memory, lost on a kill -9
    (the test above timed out so under the suite's load: its first purge was in flight when
    the proxy paused). The purge runs beside the flusher now. Here the purge's delete alone
    is held: every list logged behind it is written all the same."""
    s, db = spooled
    async with _proxied_log(s, write_timeout_s=1.0) as (proxy, log):
        proxy.hold_if = command_on("delete", SERVED_LISTS)
        log.log(served_list("before"))  # written, then the first purge: held
        await until(lambda: log.written == 1)
        await asyncio.sleep(0.3)
        for j in range(5):
            log.log(served_list(f"behind-{j}"))
        await until(lambda: log.written == 6 and log.pending == 0, timeout=10)
        assert (log.spooled, log.dropped) == (0, 0)
        proxy.release()
        await asyncio.wait_for(log.drain(), 20)
        assert await _ids(db) == {"before", *(f"behind-{j}" for j in range(5))}
        log.close_spool()
