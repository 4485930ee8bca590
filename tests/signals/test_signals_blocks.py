"""Blocks between members (``member_blocks``) on the real store: a hide of a profile records
both directions; concurrent writers lose nothing; re-applying is a no-op."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from opendisco import Settings
from opendisco.signals import BlockStore, EventProcessor, MemberBlocks


def _uid() -> str:
    return f"b{uuid.uuid4().hex[:8]}"


async def test_hiding_a_profile_blocks_its_owner_both_ways(
    clustered_settings: Settings, clustered_db: Any, clustered_os: Any
) -> None:
    proc = EventProcessor(clustered_settings, clustered_db, clustered_os)
    user = _uid()
    events = [
        {"id": uuid.uuid4().hex, "type": "hide", "user_id": user, "item_id": "prof1"},
        {"id": uuid.uuid4().hex, "type": "hide", "user_id": user, "item_id": "alpha1"},  # no member
        {"id": uuid.uuid4().hex, "type": "pass", "user_id": user, "item_id": "prof2"},  # no block
    ]
    res = await proc.apply(events)
    assert res.accepted == 3
    store = BlockStore(clustered_db)
    mine = await store.get(user)
    assert mine.blocked == ("person1",) and mine.blocked_by == ()
    theirs = await store.get("person1")
    assert user in theirs.blocked_by
    assert mine.either_way == {"person1"}
    assert user not in (await store.get("person2")).blocked_by  # a pass is not a block


async def test_concurrent_blocks_are_all_kept_and_idempotent(clustered_db: Any) -> None:
    store = BlockStore(clustered_db)
    target = _uid()
    blockers = [_uid() for _ in range(12)]
    await asyncio.gather(*(store.add([(b, target)]) for b in blockers))
    got = await store.get(target)
    assert sorted(got.blocked_by) == sorted(blockers)
    for b in blockers:
        assert (await store.get(b)).blocked == (target,)
    assert await store.add([(blockers[0], target)]) == 0  # already recorded: nothing written
    assert await store.add([(target, target)]) == 0  # blocking oneself is ignored
    nobody = _uid()
    assert await store.get(nobody) == MemberBlocks(nobody)  # no document: no blocks
