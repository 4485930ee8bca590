"""``opendisco._store.renewing``: leaving the block lets a renewal round in flight finish
(a cancelled update the server received still lands, and on FerretDB 1.x it could land after,
and undo, the holder's next write of the same documents: its events marked applied, its
claims given up), and does not wait for a round that has not started."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from opendisco._cancel import raise_lost_cancel
from opendisco._store import renewing


class _Rounds:
    """A renewal that takes ``takes_s`` and records its rounds' starts and ends."""

    def __init__(self, takes_s: float) -> None:
        self.takes_s = takes_s
        self.started = 0
        self.finished = 0

    async def __call__(self) -> None:
        self.started += 1
        await asyncio.sleep(self.takes_s)
        self.finished += 1


async def _until_started(rounds: _Rounds) -> None:
    while not rounds.started:
        await asyncio.sleep(0.001)


async def test_leaving_the_block_lets_a_round_in_flight_finish() -> None:
    rounds = _Rounds(takes_s=0.1)
    async with renewing(rounds, every_s=0.01):
        await _until_started(rounds)
    # the holder's next write (mark, release) comes after the renewal, never beside it
    assert (rounds.started, rounds.finished) == (1, 1)


async def test_a_caller_cancelled_while_leaving_still_lets_the_round_finish() -> None:
    rounds = _Rounds(takes_s=0.1)

    async def hold() -> None:
        async with renewing(rounds, every_s=0.01):
            await _until_started(rounds)

    task = asyncio.create_task(hold())
    await _until_started(rounds)
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    await asyncio.sleep(0.15)
    assert (rounds.started, rounds.finished) == (1, 1)  # and no round after it


async def test_leaving_between_rounds_is_immediate() -> None:
    rounds = _Rounds(takes_s=0.0)
    t0 = time.monotonic()
    async with renewing(rounds, every_s=10.0):
        await asyncio.sleep(0.01)
    assert time.monotonic() - t0 < 1.0 and rounds.started == 0


async def test_a_cancel_an_await_swallowed_is_raised_before_the_lease_wait_goes_on() -> None:
    """Python 3.11's ``asyncio.wait_for`` (which the driver awaits through) can return its
    result when the cancel lands as the operation completes: the lease's wait loop then kept
    polling, cancelled, for its whole ``wait_s``. The loop raises such a cancel itself."""
    polled = 0

    async def waiter() -> None:
        nonlocal polled
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as wait_for may
            await asyncio.sleep(10)
        while polled < 100:  # the lease's wait loop
            polled += 1
            raise_lost_cancel()
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert polled == 1
