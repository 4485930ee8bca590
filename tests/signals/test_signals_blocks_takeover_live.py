"""A member's hides while the lease of their blocks is a dead holder's (an API process killed
-9 mid-write): every hide answered is in ``member_blocks``, the document the rules read.

Every contender fenced the dead holder's writes on the member's document before freeing its
lease; on FerretDB 1.x (an update reads, then rewrites the whole document) one that had read
the lease before another freed and took it rewrote the new holder's document with its fence,
and the concurrent fences' upserts of a new document failed (``KeyError: 'nModified'``):
8 concurrent hides × 40 rounds lost 6 of ~300 answered blocks (the member shown someone
they had hidden) and 20–31 hides failed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from opendisco.signals._blocks import MEMBER_BLOCK_LOCKS, BlockStore


async def test_hides_racing_for_a_dead_holders_lease_are_all_kept(async_db: Any) -> None:
    failed, lost = [], []
    for _ in range(12):
        member = f"u-{uuid.uuid4().hex[:8]}"
        dead = datetime.now(UTC) - timedelta(seconds=1)
        await async_db[MEMBER_BLOCK_LOCKS].insert_one(
            {"_id": member, "owner": uuid.uuid4().hex, "expires": dead}
        )
        hidden = [f"{member}-h{i}" for i in range(8)]
        answers = await asyncio.gather(
            *(BlockStore(async_db).add([(member, h)]) for h in hidden), return_exceptions=True
        )
        failed += [repr(a) for a in answers if isinstance(a, BaseException)]
        kept = (await BlockStore(async_db).get(member)).blocked
        lost += [
            h
            for h, a in zip(hidden, answers, strict=True)
            if not isinstance(a, BaseException) and h not in kept
        ]
    assert (failed, lost) == ([], [])
