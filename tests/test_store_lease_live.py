"""``opendisco._store.lease`` on the real store: a holder working past ``lease_s`` keeps its
lease (renewed while held) — before, a second writer took it over once it expired and both
read-modified-wrote the same documents (a member's state, blocks: the last write undid the
other's) — and a released lease is free at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from opendisco import StoreBackendError
from opendisco._store import lease


async def test_a_lease_held_past_its_term_is_not_taken_over(async_db: Any) -> None:
    locks = async_db["test_lease_locks"]
    ids = [f"u-{uuid.uuid4().hex[:8]}"]
    async with lease(locks, ids, lease_s=0.3, wait_s=1.0, what="t"):
        await asyncio.sleep(0.9)  # three terms of work
        with pytest.raises(StoreBackendError, match="busy"):
            async with lease(locks, ids, lease_s=0.3, wait_s=0.5, what="t"):
                pass
    async with lease(locks, ids, lease_s=0.3, wait_s=0.1, what="t"):  # released: free
        pass
    assert await locks.count_documents({"_id": {"$in": ids}}) == 0
