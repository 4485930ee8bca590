"""The served pipeline's write side: events applied to completion, served impressions batched.

:class:`Writes` is what :meth:`Discovery.record_events`, :meth:`Discovery.record_served` and
:meth:`Discovery.drain` delegate to:

* an event batch runs in its own task to its end, so a caller that gives up (a client timeout
  cancels the request) never leaves it half-applied (its claims would otherwise stay held until
  they expire);
* a list shown to a member counts toward the exposure of its member profiles through
  :class:`~opendisco.signals.ServedExposure`'s batched background flush (no I/O on the answer
  path; setting ``exposure_count_served``); other items (movies, products) count only through
  client impression events. A list a request id was already counted with (a client retrying
  with its ``X-Request-ID``: the same page again, logged once in ``served_lists``) is not
  counted again by this process (the last :data:`RETRIES_KEPT` lists); the same id on another
  list (a client sending one id every time) still is.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._cancel import raise_lost_cancel
from opendisco._exceptions import BackendError
from opendisco._settings import Settings
from opendisco.signals import (
    RECOVER_FIRST_S,
    EventProcessor,
    EventsResult,
    ExposureStore,
    ServedExposure,
)

__all__ = ["Writes"]

log = logging.getLogger("opendisco.serving")

#: the lists counted lately, by request id, that a retry of the same request is not counted for
RETRIES_KEPT = 10_000


class Writes:
    """Events and served impressions of one pipeline (see the module docstring)."""

    def __init__(
        self, settings: Settings, os_client: AsyncOpenSearch, db: Any, exposure: ExposureStore
    ) -> None:
        self.settings = settings
        self.os = os_client
        self.db = db
        self.exposure = exposure
        self.served = ServedExposure(
            exposure, settings.exposure_flush_s, chunk=settings.exposure_flush_chunk
        )
        self._events: EventProcessor | None = None
        self._applying: set[asyncio.Future[EventsResult]] = set()
        self._lock = asyncio.Lock()
        #: hashes of ``(request id, profiles)`` of the lists counted lately, oldest first
        self._counted: OrderedDict[int, None] = OrderedDict()

    async def _processor(self) -> EventProcessor:
        if self._events is None:
            async with self._lock:
                if self._events is None:
                    proc = EventProcessor(self.settings, self.db, self.os, exposure=self.exposure)
                    await proc.ensure()
                    self._events = proc
        return self._events

    async def events(
        self, events: Sequence[Mapping[str, Any]], now: datetime | None = None
    ) -> EventsResult:
        proc = await self._processor()
        task = asyncio.ensure_future(proc.apply(list(events), now=now))
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)
        task.add_done_callback(_unawaited)
        return await asyncio.shield(task)

    def shown(self, items: Sequence[Mapping[str, Any]], request_id: str | None = None) -> None:
        """Count a list shown to a member (response items: ``{"id", "item": {...}}``), once per
        request id and list."""
        if not self.settings.exposure_count_served:
            return
        profiles = [
            str(it["id"]) for it in items if (it.get("item") or {}).get("kind") == "profile"
        ]
        if not profiles:
            return
        if request_id:
            key = hash((request_id, *profiles))  # 64 bits: not the lists themselves kept
            if key in self._counted:
                return
            self._counted[key] = None
            if len(self._counted) > RETRIES_KEPT:
                self._counted.popitem(last=False)
        self.served.add(profiles)

    async def recover_forever(self) -> None:
        """The events' recovery sweep in the background (``EventProcessor.recover_forever``),
        and the retry of the events this process's failed calls gave up (applied once the
        backends answer, not a sweep cadence later: ``EventProcessor.retry_given_up_forever``),
        from the first moment the stores answer (a set-up that fails, however, is tried again:
        an exception that ended this task would leave the process without recovery)."""
        while True:
            try:
                proc = await self._processor()
                break
            except BackendError as exc:
                log.warning("events recovery not started yet: %.200s", exc)
            except Exception:
                log.exception("events recovery not started yet")
            raise_lost_cancel()
            await asyncio.sleep(min(RECOVER_FIRST_S, self.settings.events_recover_every_s))
        await asyncio.gather(proc.recover_forever(), proc.retry_given_up_forever())

    async def drain(self) -> None:
        """Finish event batches still applying (and the releases of failed ones still retried)
        and write the served impressions not flushed."""
        if self._applying:
            await asyncio.wait(list(self._applying))
        if self._events is not None:
            await self._events.drain()
        await self.served.drain()


def _unawaited(task: asyncio.Future[Any]) -> None:
    """A batch whose caller went away (the client gave up: the shield's outside cancelled)
    finishes alone; its failure is logged here once instead of asyncio's "Task exception was
    never retrieved" traceback (its events are retried by the client or recovered)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.info("an event batch failed after its request was gone: %r", exc)
