"""What a request reads of its member, read once (:func:`read_member`, :class:`RequestReads`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opendisco._backend import backend_errors
from opendisco._domain import USERS_COLLECTION
from opendisco.signals import BlockStore, MemberBlocks, UserState, UserStateStore

__all__ = ["REQUEST_READS", "MemberRead", "RequestReads", "read_member", "reads_once"]

MemberRead = tuple[dict[str, Any] | None, UserState, MemberBlocks]


@dataclass
class RequestReads:
    """What one request read of its member (:func:`read_member`), kept for the rest of the
    request: its degraded fallback builds the rules from the pipeline's read instead of
    reading the member again (a member blocked by 50,000 others: a 1 MB ``member_blocks``
    document, 0.2–0.6 s a read on FerretDB). Whoever runs a request sets a new one in
    :data:`REQUEST_READS` (:func:`reads_once`: the API's ``guarded``); without one every call
    reads."""

    member: dict[str, MemberRead] = field(default_factory=dict)


REQUEST_READS: ContextVar[RequestReads | None] = ContextVar("request_reads", default=None)


@contextmanager
def reads_once() -> Iterator[RequestReads]:
    """A request's :class:`RequestReads` while the block runs (tasks it starts share it)."""
    reads = RequestReads()
    token = REQUEST_READS.set(reads)
    try:
        yield reads
    finally:
        REQUEST_READS.reset(token)


async def read_member(
    db: Any, states: UserStateStore, blocks: BlockStore, user_id: str
) -> MemberRead:
    """A member's ``users`` document, :class:`UserState` and blocks: three point reads by
    ``_id``, concurrently (what the hard rules and the candidate request are built from),
    once per request (:class:`RequestReads`)."""
    reads = REQUEST_READS.get()
    if reads is not None and (held := reads.member.get(user_id)) is not None:
        return held
    with backend_errors(f"loading user {user_id!r} failed"):
        user, state, member_blocks = await asyncio.gather(
            db[USERS_COLLECTION].find_one(user_id), states.get(user_id), blocks.get(user_id)
        )
    if reads is not None:
        reads.member[user_id] = (user, state, member_blocks)
    return user, state, member_blocks
