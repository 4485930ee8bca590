"""Blocks between members, both directions, one document per member (``member_blocks``).

A member blocks another by hiding their profile (a ``hide`` event on an item of kind
``profile``; its ``owner_id`` is the blocked member). The blocker's :class:`UserState` lists
the hidden item (``blocked``); this store adds what the state cannot answer with one read: who
blocked *me*. Each member's document holds both sides::

    {_id: user_id, blocked: [user ids this member blocked],
                   blocked_by: [user ids who blocked this member], updated_at}

so serving reads one document by ``_id`` (a point read on FerretDB too) and excludes the
items of every member in either list (the blocked member must not see the blocker either).
A block touches two documents: they are read, merged and replaced under both members'
leases (FerretDB updates are not atomic read-modify-writes), fenced by the leases' token
(``_store_fence``: a write held past its client's timeout no longer lands over a newer block,
its writer's fence failed or not); adding the same
pair again changes nothing, so a re-applied event batch is harmless.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opendisco._backend import backend_errors
from opendisco._domain import stored_ids

from ._store_fence import lease_documents, replace_fenced

__all__ = ["MEMBER_BLOCKS", "MEMBER_BLOCK_LOCKS", "BlockStore", "MemberBlocks"]

MEMBER_BLOCKS = "member_blocks"
MEMBER_BLOCK_LOCKS = "member_blocks_locks"


@dataclass(frozen=True)
class MemberBlocks:
    """One member's blocks: whom they blocked and who blocked them (user ids)."""

    user_id: str
    blocked: tuple[str, ...] = ()
    blocked_by: tuple[str, ...] = ()

    @property
    def either_way(self) -> frozenset[str]:
        """Members whose items this member must never be shown."""
        return frozenset((*self.blocked, *self.blocked_by))

    @classmethod
    def from_doc(
        cls, user_id: str, doc: dict[str, Any] | None, *, salvage: bool = False
    ) -> MemberBlocks:
        """The member's blocks as stored (``salvage``: a writer's read, see
        :func:`~opendisco._domain.stored_ids`)."""
        doc = doc or {}
        where = f"member_blocks {user_id!r}"
        return cls(
            user_id=user_id,
            blocked=tuple(stored_ids(doc.get("blocked"), f"{where} blocked", salvage=salvage)),
            blocked_by=tuple(
                stored_ids(doc.get("blocked_by"), f"{where} blocked_by", salvage=salvage)
            ),
        )


class BlockStore:
    """Reads (one point read per member) and leased writes of ``member_blocks``."""

    lease_s = 5.0
    lock_wait_s = 10.0

    def __init__(self, db: Any) -> None:
        self.coll = db[MEMBER_BLOCKS]
        self.locks = db[MEMBER_BLOCK_LOCKS]

    async def get(self, user_id: str) -> MemberBlocks:
        with backend_errors("member_blocks lookup failed"):
            doc = await self.coll.find_one({"_id": user_id})
        return MemberBlocks.from_doc(user_id, doc)

    async def add(self, pairs: Iterable[tuple[str, str]], now: datetime | None = None) -> int:
        """Record ``(blocker, blocked)`` pairs (self-blocks ignored); returns the member
        documents changed."""
        pairs = sorted({(a, b) for a, b in pairs if a and b and a != b})
        if not pairs:
            return 0
        blocked: dict[str, set[str]] = defaultdict(set)
        blocked_by: dict[str, set[str]] = defaultdict(set)
        for a, b in pairs:
            blocked[a].add(b)
            blocked_by[b].add(a)
        users = sorted({*blocked, *blocked_by})
        now = now or datetime.now(UTC)
        async with lease_documents(
            self.coll, self.locks, users, lease_s=self.lease_s, wait_s=self.lock_wait_s
        ) as held:
            with backend_errors("member_blocks read failed"):
                docs = await self.coll.find({"_id": {"$in": users}}).to_list(None)
            # salvaged: failing on one member's odd document left the other side of each
            # of its blocks unwritten (the blocked member went on seeing the blocker)
            current = {d["_id"]: MemberBlocks.from_doc(d["_id"], d, salvage=True) for d in docs}
            writes = []
            for user in users:
                old = current.get(user) or MemberBlocks(user)
                new_blocked = sorted({*old.blocked, *blocked.get(user, ())})
                new_by = sorted({*old.blocked_by, *blocked_by.get(user, ())})
                if new_blocked == sorted(old.blocked) and new_by == sorted(old.blocked_by):
                    continue
                writes.append(
                    {"_id": user, "blocked": new_blocked, "blocked_by": new_by, "updated_at": now}
                )
            await replace_fenced(self.coll, writes, held=held)
        return len(writes)
