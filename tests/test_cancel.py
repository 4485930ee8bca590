"""The background loops that retry around store and engine calls end on one cancellation,
also when the call swallowed it: on Python 3.11 ``asyncio.wait_for`` (which the MongoDB driver
awaits through) returns its result when the cancel lands as the call completes, and the driver
answers a cancelled operation whose connection fails with its own error. Each loop went on to
its next wait (up to its whole cadence: 300 s for the events' recovery sweep), run again only
by the shutdown's second cancel (``stop_tasks``, bounded at 5 s) — or never, where nothing
cancels twice. Pure loop tests: the call is a stand-in that swallows the cancel as the driver
may; what a real driver does is tested against the servers elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo.errors import AutoReconnect
from served_lists import served_list

from opendisco import Settings, StoreBackendError
from opendisco._cancel import bounded, in_daemon_thread
from opendisco._store import MAX_WRITES_PER_COMMAND, _release
from opendisco.api._ratesync import RateShares
from opendisco.experiments._log import ExperimentLog
from opendisco.serving._writes import Writes
from opendisco.signals._claims import EventClaims
from opendisco.signals._copies import LocalCopy
from opendisco.signals._given_up import GivenUp
from opendisco.signals._processor import EventProcessor
from opendisco.signals._served import ServedExposure
from opendisco.signals._served_log import ServedLog


class _Swallowing:
    """A store call that loses the first cancellation landing in it, then returns ``result``
    (or raises it: the driver's own error)."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.entered = asyncio.Event()
        self.swallowed = False

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def _shares(call: _Swallowing) -> Coroutine[Any, Any, None]:
    shares = RateShares(defaultdict(lambda: None), interval_s=30.0)
    shares.sync = call  # type: ignore[method-assign]
    return shares.run()


def _copy(call: _Swallowing) -> Coroutine[Any, Any, None]:
    copy: LocalCopy[Any] = LocalCopy(SimpleNamespace(what="rows"), every_s=30.0, max_items=10)  # type: ignore[arg-type]
    copy.refresh = call  # type: ignore[method-assign]
    return copy.run()


def _given_up(call: _Swallowing) -> Coroutine[Any, Any, None]:
    given_up = GivenUp(None, None)  # type: ignore[arg-type]
    given_up.add(["e1"])
    call.result = 0  # nothing applied: backs off
    given_up.retry_once = call  # type: ignore[method-assign]
    return given_up.retry_forever(first_s=0.01, max_s=30.0)


def _sweep(call: _Swallowing) -> Coroutine[Any, Any, None]:
    proc = EventProcessor.__new__(EventProcessor)  # the loop alone: no clients
    proc.settings = Settings(events_recover_every_s=300.0)
    call.result = True  # a sweep done: the next in a cadence
    proc._sweep_logged = call  # type: ignore[method-assign]
    return proc.recover_forever(first_s=0.01)


def _recovery_start(call: _Swallowing) -> Coroutine[Any, Any, None]:
    writes = Writes.__new__(Writes)  # the loop alone: no clients
    writes.settings = Settings(events_recover_every_s=300.0)
    call.result = StoreBackendError("operation cancelled")  # the driver's own error
    writes._processor = call  # type: ignore[method-assign]
    return writes.recover_forever()


@pytest.mark.parametrize(
    "start", [_shares, _copy, _given_up, _sweep, _recovery_start], ids=lambda f: f.__name__
)
async def test_a_loop_ends_on_a_cancel_its_store_call_swallowed(
    start: Callable[[_Swallowing], Coroutine[Any, Any, None]],
) -> None:
    call = _Swallowing()
    task = asyncio.ensure_future(start(call))
    await asyncio.wait_for(call.entered.wait(), 5.0)
    task.cancel()  # once, as it lands in the call
    done, _ = await asyncio.wait({task}, timeout=1.0)
    try:
        assert done, "the loop went on after its cancellation"
        assert task.cancelled()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _cancelled_once_in(task: asyncio.Future[Any], call: _Swallowing) -> set[Any]:
    """``task`` cancelled once as it is in ``call``; what ended within 1 s."""
    await asyncio.wait_for(call.entered.wait(), 5.0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)
    return done


async def test_a_flush_cut_short_sends_no_later_part_after_a_swallowed_cancel() -> None:
    """The shutdown's drain cancels a flush of the served impressions at its deadline: the
    parts after the one in flight are kept for the next process (the journal), not sent one
    by one to an engine that does not answer, each until its timeout."""
    call = _Swallowing([])
    served = ServedExposure(SimpleNamespace(record=call), flush_s=1.0, chunk=1)  # type: ignore[arg-type]
    served.add(["a", "b", "c"])
    task = asyncio.ensure_future(served.flush(pace=False))
    done = await _cancelled_once_in(task, call)
    try:
        assert done and task.cancelled(), "the flush went on after its cancellation"
        assert served.written == 1  # the part in flight landed; the others are kept
        assert sum(sum(c.values()) for _, c in served.retry) + sum(served.pending.values()) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_drain_cut_short_writes_no_later_batch_after_a_swallowed_cancel() -> None:
    """The shutdown's drain of the served-list log, cancelled at its deadline, stops after the
    batch in flight: the lists behind it are dropped and counted (spooled, with a spool), not
    written batch by batch to a store that does not answer, each until its write timeout."""
    call = _Swallowing()
    log = ServedLog(defaultdict(lambda: None))
    log._ready = True
    log._insert = call  # type: ignore[method-assign]
    for i in range(MAX_WRITES_PER_COMMAND + 1):
        log.log(served_list(f"r{i}"))
    task = asyncio.ensure_future(log.drain())
    done = await _cancelled_once_in(task, call)
    try:
        assert done and task.cancelled(), "the drain went on after its cancellation"
        assert log.dropped == 1  # the list behind the batch in flight: counted, not written
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_experiment_log_drain_cut_short_writes_no_later_batch() -> None:
    """The shutdown's drain of the experiments' exposure log (5 s) stops after the batch in
    flight when its write swallowed the cancel, or answered it with its own error: it wrote
    every later batch to a store that does not answer, each until its socket timeout."""
    call = _Swallowing(StoreBackendError("operation cancelled"))
    log = ExperimentLog(defaultdict(lambda: SimpleNamespace(insert_many=call)), batch=1)
    log.queue = [{"_id": str(i)} for i in range(3)]
    task = asyncio.ensure_future(log.drain())
    done = await _cancelled_once_in(task, call)
    try:
        assert done and task.cancelled(), "the drain went on after its cancellation"
        assert len(log.queue) == 2  # not sent: the process stops
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _lease_release(call: _Swallowing) -> Coroutine[Any, Any, None]:
    call.result = AutoReconnect("operation cancelled")  # the driver's answer to the cancel
    return _release(SimpleNamespace(delete_many=call), ["a"], "token", within_s=60.0)


def _claims_release(call: _Swallowing) -> Coroutine[Any, Any, bool]:
    claims = EventClaims.__new__(EventClaims)  # the loop alone: no clients
    call.result = False  # not released: tried again
    claims.try_release = call  # type: ignore[method-assign]
    return claims.release_until(["e1"], "token", [], {}, within_s=60.0)


@pytest.mark.parametrize("start", [_lease_release, _claims_release], ids=lambda f: f.__name__)
async def test_a_release_retried_in_the_background_ends_on_one_cancel(
    start: Callable[[_Swallowing], Coroutine[Any, Any, Any]],
) -> None:
    """Releases of leases and claims a failed write left are retried in the background for up
    to a lease; the process's end (``asyncio.run`` cancels what is left once, and waits for it)
    waited that long for one whose store answered the cancel with its own error."""
    call = _Swallowing()
    task = asyncio.ensure_future(start(call))
    done = await _cancelled_once_in(task, call)
    try:
        assert done and task.cancelled(), "the release went on after its cancellation"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_bounded_step_ends_at_its_budget_when_it_swallowed_the_cancel() -> None:
    """A shutdown's step given a budget (:func:`bounded`): one that swallows the cancel and
    goes on (a drain sending its next batch) is cancelled again and ends at its budget;
    ``asyncio.wait_for`` waited for it to end on its own (here 30 s: the budget lost)."""

    async def drain(call: _Swallowing) -> None:
        await call()  # swallows the first cancel, as the driver may
        await asyncio.sleep(30)  # the next batch, to a store that does not answer

    t0 = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await bounded(drain(_Swallowing()), 0.2)
    assert asyncio.get_running_loop().time() - t0 < 1.0
    assert await bounded(asyncio.sleep(0, "done"), 1.0) == "done"


async def test_a_call_in_a_daemon_thread_hands_back_its_result_or_error() -> None:
    """:func:`in_daemon_thread` (the encoder's load: a process stopped while it loads does
    not wait for it at exit) hands back what the call returned or raised."""
    assert await in_daemon_thread(lambda x: x + 1, 1) == 2
    with pytest.raises(ZeroDivisionError):
        await in_daemon_thread(lambda: 1 / 0)
