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

from opendisco import Settings, StoreBackendError
from opendisco.api._ratesync import RateShares
from opendisco.serving._writes import Writes
from opendisco.signals._copies import LocalCopy
from opendisco.signals._given_up import GivenUp
from opendisco.signals._processor import EventProcessor


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
