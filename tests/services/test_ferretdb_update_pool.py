"""FerretDB's update command and its SQLite connections (a build patch in
``opendisco.services._ferretdb_patches``): concurrent multi-statement updates, what several
API processes applying event batches send (and what piles up while the store is paused),
must not wedge the database."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient, UpdateOne
from pymongo.errors import PyMongoError

COMMANDS, STATEMENTS, ROUNDS = 6, 50, 5  # 300 statements at once: 3x the pool of 100


@pytest.fixture
def pool_db(settings: Any) -> Iterator[Any]:
    # timeouts: a wedged database never answers, not even the drop (the test fails anyway)
    client = MongoClient(settings.mongo_url, socketTimeoutMS=60_000)
    db = client[f"{settings.mongo_db}up"]
    yield db
    with contextlib.suppress(PyMongoError):
        client.drop_database(db.name)
    client.close()


def test_concurrent_update_commands_do_not_wedge_the_store(settings: Any, pool_db: Any) -> None:
    """Before: each statement's rows stayed open until its command ended, so a command of 50
    updates held up to 50 of the database's 100 SQLite connections; 4 such commands at once
    each held some and waited for more, every command timed out and the database answered
    no update or query again until FerretDB was restarted (``ferretdb_sqldb_in_use`` 100).
    That was the 45 s pause of a probe with two API processes taking likes: after the
    resume, the piled-up event batches wedged it."""
    pool_db["counters"].insert_one({"_id": "warm"})  # the table exists before the race
    # one connection per command (pymongo would queue them otherwise); a generous timeout:
    # a wedged database never answers, a loaded machine answers late
    conn = MongoClient(settings.mongo_url, maxPoolSize=COMMANDS + 2, socketTimeoutMS=60_000)
    coll = conn[pool_db.name]["counters"]
    failures: list[BaseException] = []

    def commands(t: int) -> None:
        for _ in range(ROUNDS):
            ops = [
                UpdateOne({"_id": f"c{t}-{j}"}, {"$inc": {"n": 1}}, upsert=True)
                for j in range(STATEMENTS)
            ]
            try:
                coll.bulk_write(ops, ordered=False)
            except Exception as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=commands, args=(t,)) for t in range(COMMANDS)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        conn.close()
    assert not failures, failures[:2]
    counts = [d["n"] for d in pool_db["counters"].find({"_id": {"$ne": "warm"}})]
    assert len(counts) == COMMANDS * STATEMENTS and set(counts) == {ROUNDS}
