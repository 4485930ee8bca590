"""An event batch whose request went away finishes alone, and says so once."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from opendisco import Settings, StoreBackendError
from opendisco.serving._writes import Writes


class _FailingLater:
    """An event processor whose batch fails after its caller gave up."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def apply(self, events: Any, now: Any = None) -> Any:
        self.started.set()
        await asyncio.sleep(0.05)
        raise StoreBackendError("the store went away mid batch")


async def test_a_batch_failing_after_its_caller_left_is_logged_not_lost_to_asyncio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The route's ``await`` is cancelled (client timeout), the shielded batch fails later:
    asyncio used to report "Task exception was never retrieved" with a traceback at garbage
    collection; now the failure is retrieved and logged once."""
    writes = Writes(Settings(), None, None, None)  # type: ignore[arg-type]
    proc = _FailingLater()
    writes._events = proc  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
    try:
        with caplog.at_level(logging.INFO, logger="opendisco.serving"):
            route = asyncio.ensure_future(writes.events([{"id": "e1"}]))
            await proc.started.wait()
            route.cancel()  # the client gave up
            with pytest.raises(asyncio.CancelledError):
                await route
            while writes._applying:
                await asyncio.sleep(0.01)
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old_handler)
    assert not unretrieved, unretrieved
    assert "failed after its request was gone" in caplog.text
