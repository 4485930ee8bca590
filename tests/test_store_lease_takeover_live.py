"""``opendisco._store.lease`` on the real store: a dead holder's lease, wanted by many
contenders at once (an API process killed -9 while it held a member's lease, the member's
next events posted to every worker), goes to one of them at a time.

FerretDB 1.x deletes by reading the matching documents, then deleting by ``_id``: a
contender's delete of the dead holder's lease landed after another had deleted it and
inserted its own, and removed that one, so a third took the lease too (8 contenders: two
holders in 2–4 of 80 rounds, 3–4 of 640 read-modify-writes lost): both read-modified-wrote
the member's documents (a block, a like lost). This test failed 5 runs of 5 before the fix
(1–6 leases deleted under their holder)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from opendisco._exceptions import IndexStateError
from opendisco._store import lease
from opendisco.ingest._build_lease import REINDEX_LEASES, BuildLease


async def test_a_dead_holders_lease_goes_to_one_contender_at_a_time(async_db: Any) -> None:
    locks = async_db["test_lease_takeover_locks"]
    keys = [f"m-{uuid.uuid4().hex[:8]}" for _ in range(4)]  # 4 members' leases at once
    doubled, lost = [], 0

    async def contender(key: str, inside: list[int]) -> None:
        nonlocal lost
        async with lease(locks, [key], lease_s=10, wait_s=30, what="t") as held:
            inside.append(1)
            doubled.append(len(inside))
            await asyncio.sleep(0.01)
            # its lease is still its own (not deleted by another contender)
            lost += (await locks.find_one({"_id": key}) or {}).get("owner") != held.token
            inside.pop()

    for _ in range(10):
        dead = datetime.now(UTC) - timedelta(seconds=1)
        await locks.insert_many([{"_id": k, "owner": "dead", "expires": dead} for k in keys])
        inside: dict[str, list[int]] = {k: [] for k in keys}
        await asyncio.gather(*(contender(k, inside[k]) for k in keys for _ in range(10)))
    assert (lost, max(doubled)) == (0, 1), f"{lost} leases deleted under their holder"
    assert await locks.count_documents({}) == 0  # no lease nor arbiter left


async def test_of_two_rebuilds_after_a_dead_one_one_starts(async_db: Any) -> None:
    # two `opendisco reindex` runs started after one killed -9: both deleted its lease and
    # inserted their own, the later delete removing the earlier's (28 of 100 rounds both
    # started; with keep_versions=0 each deletes the index the other swapped the alias to)
    started = []
    for _ in range(20):
        alias = f"a-{uuid.uuid4().hex[:8]}"
        dead = {"_id": alias, "owner": "dead", "expires": datetime.now(UTC) - timedelta(seconds=1)}
        await async_db[REINDEX_LEASES].insert_one(dead)

        async def rebuild(alias: str = alias) -> int:
            try:
                await BuildLease(async_db, alias).acquire()
            except IndexStateError:
                return 0
            return 1

        started.append(sum(await asyncio.gather(rebuild(), rebuild())))
    assert max(started) == 1, f"both started in {started.count(2)} of 20 rounds"
