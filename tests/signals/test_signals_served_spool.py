"""The served-list log's spool on the real store: a MongoDB outage loses no served list, and
neither does a kill -9 during one (``signals._served_spool``).

The outage is a TCP proxy killed in front of the shared FerretDB (the server itself is never
touched), or, for the child process killed with SIGKILL, a store address nothing listens on.
Before the spool, the lists of an outage waited in the queue: what overflowed it was dropped,
and a kill -9 (or a shutdown whose last write failed) lost all of it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from typing import Any

import numpy as np
from served_lists import served_list, until
from tcp_faults import store_proxy

from opendisco import Settings, clients
from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import SERVED_LISTS, ServedLog, ServedSpool, spool_dir

#: the child: a log whose store is down (nothing listens), ``T_N`` lists logged, the first
#: ones queued until a write failed, the rest spooled as they are logged; then SIGKILL
CHILD = """
import asyncio, os, signal, time
from datetime import UTC, datetime
import numpy as np
from opendisco import Settings, clients
from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import ServedList, ServedLog, ServedSpool

settings = Settings.model_validate_json(os.environ["T_SETTINGS"])
n = int(os.environ["T_N"])

def served(rid):
    return ServedList(rid, datetime.now(UTC), "u1", "for_you", "for_you", "v", True, 3,
                      FEATURE_NAMES, np.ones((3, len(FEATURE_NAMES))), ["a", "b", "c"],
                      [0, 1, 2], [1.0] * 3)

async def main():
    mongo = clients.mongo_async(settings, serverSelectionTimeoutMS=300)
    log = ServedLog(mongo[settings.mongo_db], flush_every_s=0.05)
    log.attach_spool(ServedSpool.for_settings(settings))
    for i in range(3):
        log.log(served(f"kill-{i}"))
    end = time.monotonic() + 60
    while not log.failed and time.monotonic() < end:
        await asyncio.sleep(0.05)
    for i in range(3, n):  # logged while writes fail: spooled at once
        log.log(served(f"kill-{i}"))
    assert log.spooled == n and log.pending == 0, (log.spooled, log.pending)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def _spool_files(s: Settings) -> list[str]:
    d = spool_dir(s)
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def test_an_outage_past_the_queue_bound_loses_no_list(
    spooled: tuple[Settings, Any],
) -> None:
    """The store cut off while 60 lists are logged with a queue of 5: before the spool, 55
    were dropped (the queue's bound); with it, every list is written once the store is
    back, the spool's files deleted. At shutdown with the store down, the drain spools what
    it could not write, and the next process's log writes it back."""
    s, db = spooled
    proxy = await store_proxy(s.mongo_url)
    mongo = clients.mongo_async(s.model_copy(update={"mongo_url": proxy.mongo_url}))
    try:
        log = ServedLog(mongo[s.mongo_db], max_rows=10, max_queue=5, flush_every_s=0.05)
        log.attach_spool(ServedSpool.for_settings(s.model_copy(update={"served_log_spool_mb": 8})))
        log.log(served_list("before"))
        await until(lambda: log.written == 1)
        await proxy.kill()
        for j in range(3):  # queued until a write fails
            log.log(served_list(f"down-{j:02d}"))
        await until(lambda: log.failed > 0)
        for j in range(3, 60):  # then spooled as they are logged: the queue bound is moot
            log.log(served_list(f"down-{j:02d}"))
        assert log.pending == 0
        assert (log.spooled, log.dropped) == (60, 0)
        assert any(name.endswith(".bson") for name in _spool_files(s))
        await proxy.resume()
        await until(lambda: log.written == 61)
        await until(lambda: not any(n.endswith(".bson") for n in _spool_files(s)))
        assert (log.pending, log.dropped) == (0, 0)
        assert await db[SERVED_LISTS].count_documents({}) == 61
        doc = await db[SERVED_LISTS].find_one({"_id": "down-07"})
        assert doc is not None and doc["degraded"] is True and doc["ids"] == ["a", "b", "c"]

        await proxy.kill()  # the store down at shutdown
        for j in range(3):
            log.log(served_list(f"end-{j}"))
        await asyncio.wait_for(log.drain(), 60)
        assert log.dropped == 0 and log.pending == 0
        log.close_spool()
        await proxy.resume()
        again = ServedLog(mongo[s.mongo_db], max_rows=10, flush_every_s=0.05)
        again.attach_spool(ServedSpool.for_settings(s))  # the next process here
        await until(lambda: again.written == 3)
        ids = {d["_id"] async for d in db[SERVED_LISTS].find({}, {"_id": 1})}
        assert {f"end-{j}" for j in range(3)} <= ids and len(ids) == 64
        await again.drain()
        again.close_spool()
        assert _spool_files(s) == []  # everything written: no file, no lock, no directory
    finally:
        await proxy.close()
        await mongo.close()


async def test_lists_spooled_by_a_process_killed_during_an_outage_are_written_by_the_next(
    spooled: tuple[Settings, Any],
) -> None:
    """A child process logs 12 lists while its store is down (3 queued until a write failed,
    9 as writes fail) and is killed with SIGKILL; a log started after it in the same state
    directory writes every one of them, once."""
    s, db = spooled
    down = s.model_copy(update={"mongo_url": "mongodb://127.0.0.1:9/"})  # nothing listens
    env = {**os.environ, "T_SETTINGS": down.model_dump_json(), "T_N": "12"}
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, timeout=120, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert any(n.endswith(".bson") for n in _spool_files(s))

    mongo = clients.mongo_async(s)
    try:
        log = ServedLog(mongo[s.mongo_db], flush_every_s=0.05)
        log.attach_spool(ServedSpool.for_settings(s))
        await until(lambda: log.written == 12)
        ids = sorted([d["_id"] async for d in db[SERVED_LISTS].find({}, {"_id": 1})])
        assert ids == sorted(f"kill-{i}" for i in range(12))
        doc = await db[SERVED_LISTS].find_one({"_id": "kill-5"})
        assert doc is not None and len(bytes(doc["X"])) == 3 * len(FEATURE_NAMES) * 4
        await log.drain()
        log.close_spool()
        assert _spool_files(s) == []
    finally:
        await mongo.close()


async def test_a_list_written_back_twice_is_stored_once(spooled: tuple[Settings, Any]) -> None:
    """A write-back killed after its insert and before it deleted the file leaves the file
    for the next process (here: a copy of a spool's file under a dead owner's name, its lock
    free): it inserts the same lists again, and the store keeps the first copy of each."""
    s, db = spooled
    proxy = await store_proxy(s.mongo_url)
    mongo = clients.mongo_async(s.model_copy(update={"mongo_url": proxy.mongo_url}))
    try:
        log = ServedLog(mongo[s.mongo_db], flush_every_s=0.05)
        spool = ServedSpool.for_settings(s)
        log.attach_spool(spool)
        await proxy.kill()
        for j in range(4):
            log.log(served_list(f"twice-{j}"))
        await until(lambda: log.spooled == 4)
        root = spool_dir(s)
        for p in list(root.glob(f"{spool.name}-*.bson")):
            shutil.copy(p, root / p.name.replace(spool.name, "1-dead"))
        (root / "1-dead.lock").touch()
        await proxy.resume()
        await until(lambda: log.written == 4)
        again = ServedLog(mongo[s.mongo_db], flush_every_s=0.05)
        again.attach_spool(ServedSpool.for_settings(s))
        await until(lambda: again.duplicates == 4)
        assert await db[SERVED_LISTS].count_documents({}) == 4
        for each in (log, again):
            await asyncio.wait_for(each.drain(), 60)
            each.close_spool()
        assert _spool_files(s) == []
    finally:
        await proxy.close()
        await mongo.close()


async def test_a_list_over_the_bson_limit_does_not_hold_back_the_others(
    spooled: tuple[Settings, Any],
) -> None:
    """A list whose document is over the server's BSON limit (its ids: 200 of 100 KB): the
    driver refuses the batch holding it (``DocumentTooLarge``) on every attempt, so before,
    the lists queued behind it were never written either (and a spool holding it was never
    emptied). Now that batch goes one list at a time: the others are written, and the big
    one is written where the server takes it alone (FerretDB does) or dropped and counted."""
    s, db = spooled
    huge = replace(served_list("huge"), ids=[f"{i:03d}" + "x" * 100_000 for i in range(200)])
    huge = replace(huge, X=np.ones((200, len(FEATURE_NAMES))), shown=[0, 1, 2])
    proxy = await store_proxy(s.mongo_url)
    mongo = clients.mongo_async(s.model_copy(update={"mongo_url": proxy.mongo_url}))
    try:
        log = ServedLog(mongo[s.mongo_db], flush_every_s=0.05)
        log.log(served_list("a"))
        log.log(huge)
        log.log(served_list("b"))
        # stored once each, whichever way: a write of the huge list can outlast the log's
        # write timeout (3 s) on a loaded machine and land all the same, the retry then
        # counting duplicates (before, the wait below never ended: 1 run in 3 with the CPU busy)
        await until(lambda: _settled(log) == 3 and log.pending == 0)
        log.attach_spool(ServedSpool.for_settings(s))
        await proxy.kill()
        log.log(served_list("c"))
        await until(lambda: log.failed > 0)
        log.log(replace(huge, request_id="huge2"))  # spooled while writes fail
        log.log(served_list("d"))
        await until(lambda: log.spooled == 3)
        await proxy.resume()
        await until(lambda: _settled(log) == 6 and not _bson_files(s))
        ids = {d["_id"] async for d in db[SERVED_LISTS].find({}, {"_id": 1})}
        assert {"a", "b", "c", "d"} <= ids and len(ids) == 6 - log.dropped
        await log.drain()
        log.close_spool()
    finally:
        await proxy.close()
        await mongo.close()


def _settled(log: ServedLog) -> int:
    """Lists the store took (once: a repeat is a duplicate) or that were dropped."""
    return log.written + log.duplicates + log.dropped


def _bson_files(s: Settings) -> list[str]:
    return [n for n in _spool_files(s) if n.endswith(".bson")]
